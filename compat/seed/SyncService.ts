import axios, { AxiosInstance } from 'axios';
import { Database } from 'better-sqlite3';
import * as jwt_decode from 'jwt-decode';

interface SyncQueueItem {
  id?: number;
  type: 'copy' | 'write';
  payload: Record<string, any>;
  status: 'pending' | 'synced' | 'failed';
  created_at?: string;
  error?: string;
}

interface SyncConfig {
  serverUrl: string;
  wsUrl: string;
  deviceId: string;
  jwtToken: string;
  db: Database;
}

export class SyncService {
  private config: SyncConfig;
  private apiClient: AxiosInstance;
  private isOnline: boolean = true;
  private syncInterval: NodeJS.Timeout | null = null;

  constructor(config: SyncConfig) {
    this.config = config;
    this.apiClient = axios.create({
      baseURL: config.serverUrl,
      headers: {
        Authorization: `Bearer ${config.jwtToken}`,
        'Content-Type': 'application/json',
      },
      timeout: 10000,
    });

    // Detect online/offline
    this.setupConnectivityMonitor();
  }

  /**
   * Queue an operation for later sync
   */
  async queueOperation(
    type: 'copy' | 'write',
    payload: Record<string, any>
  ): Promise<number> {
    const stmt = this.config.db.prepare(`
      INSERT INTO sync_queue (type, payload, status, created_at)
      VALUES (?, ?, ?, datetime('now'))
    `);

    const result = stmt.run(type, JSON.stringify(payload), 'pending');
    return result.lastInsertRowid as number;
  }

  /**
   * Send queued operations to server
   */
  async pushQueue(): Promise<{
    success: boolean;
    synced: number;
    failed: number;
  }> {
    try {
      // Get pending items
      const pending = this.config.db
        .prepare(
          `SELECT * FROM sync_queue WHERE status = 'pending' ORDER BY created_at ASC`
        )
        .all() as SyncQueueItem[];

      if (pending.length === 0) {
        return { success: true, synced: 0, failed: 0 };
      }

      // Prepare queue
      const queue = pending.map((item) => ({
        id: item.id,
        type: item.type,
        payload: JSON.parse(item.payload as string),
      }));

      // Send to server
      const response = await this.apiClient.post('/api/sync/push', {
        device_id: this.config.deviceId,
        queue,
      });

      // Process results
      let synced = 0;
      let failed = 0;

      if (response.data.data && Array.isArray(response.data.data)) {
        const updateStmt = this.config.db.prepare(
          `UPDATE sync_queue SET status = ?, error = ? WHERE id = ?`
        );

        for (const result of response.data.data) {
          if (result.status === 'synced') {
            updateStmt.run('synced', null, result.id);
            synced++;
          } else {
            updateStmt.run('failed', result.error, result.id);
            failed++;
          }
        }
      }

      return { success: true, synced, failed };
    } catch (error: any) {
      console.error('Push sync failed:', error.message);
      return { success: false, synced: 0, failed: pending.length };
    }
  }

  /**
   * Pull latest data from server
   */
  async pullQuotas(): Promise<any> {
    try {
      const response = await this.apiClient.get('/api/sync/pull');

      if (response.data.success) {
        // Update local quotas
        const updateQuota = this.config.db.prepare(
          `UPDATE quotas SET remaining = ?, updated_at = datetime('now')
           WHERE client_id = ?`
        );

        for (const quota of response.data.quotas || []) {
          updateQuota.run(quota.remaining, quota.client_id);
        }

        return response.data;
      }

      return { success: false };
    } catch (error: any) {
      console.error('Pull sync failed:', error.message);
      return { success: false };
    }
  }

  /**
   * Record copy operation in local queue
   */
  async recordCopy(clientId: number, uid: string): Promise<boolean> {
    try {
      // Check quota locally
      const quota = this.config.db
        .prepare('SELECT remaining FROM quotas WHERE client_id = ?')
        .get(clientId) as any;

      if (!quota || quota.remaining <= 0) {
        console.error('Insufficient quota');
        return false;
      }

      // Decrement locally (optimistic)
      const updateQuota = this.config.db.prepare(
        `UPDATE quotas SET remaining = remaining - 1 WHERE client_id = ?`
      );
      updateQuota.run(clientId);

      // Queue the operation
      await this.queueOperation('copy', {
        client_id: clientId,
        uid,
        status: 'pending',
      });

      return true;
    } catch (error: any) {
      console.error('Record copy failed:', error.message);
      return false;
    }
  }

  /**
   * Auto-sync when online
   */
  private setupConnectivityMonitor(): void {
    // Check every 30 seconds if online
    this.syncInterval = setInterval(async () => {
      const wasOnline = this.isOnline;
      this.isOnline = await this.checkConnectivity();

      // Transitioned online: trigger sync
      if (!wasOnline && this.isOnline) {
        console.log('Connection restored - syncing...');
        await this.pushQueue();
        await this.pullQuotas();
      }
    }, 30000);
  }

  /**
   * Check if server is reachable
   */
  private async checkConnectivity(): Promise<boolean> {
    try {
      const response = await axios.get(`${this.config.serverUrl}/health`, {
        timeout: 5000,
      });
      return response.status === 200;
    } catch {
      return false;
    }
  }

  /**
   * Get token expiry time
   */
  getTokenExpiry(): number | null {
    try {
      const decoded = jwt_decode.jwtDecode(
        this.config.jwtToken
      ) as any;
      return decoded.exp ? decoded.exp * 1000 : null;
    } catch {
      return null;
    }
  }

  /**
   * Check if token needs refresh
   */
  isTokenExpiringSoon(): boolean {
    const expiry = this.getTokenExpiry();
    if (!expiry) return false;
    const now = Date.now();
    return expiry - now < 24 * 60 * 60 * 1000; // Less than 1 day
  }

  /**
   * Clean up
   */
  destroy(): void {
    if (this.syncInterval) {
      clearInterval(this.syncInterval);
    }
  }
}

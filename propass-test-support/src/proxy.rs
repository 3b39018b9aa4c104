//! A fault-injecting TCP proxy (after crates.io's ChaosProxy): between the
//! server and PostgreSQL, or between an agent and the server.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the proxy does with traffic.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Mode {
    /// Forward both ways.
    Pass = 0,
    /// Forward requests; when the upstream answers, cut the connection
    /// without delivering the answer (the server committed, the client never
    /// knows).
    SwallowAnswers = 1,
    /// Refuse new connections and sever the open ones: the network is down.
    Cut = 2,
}

impl Mode {
    fn of(v: u8) -> Self {
        match v {
            1 => Self::SwallowAnswers,
            2 => Self::Cut,
            _ => Self::Pass,
        }
    }
}

/// The proxy; it stops, severing every link, when dropped.
pub struct FaultProxy {
    port: u16,
    upstream: String,
    mode: Arc<AtomicU8>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: impl Into<String>) -> Self {
        let upstream = upstream.into();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (m, l, up) = (mode.clone(), links.clone(), upstream.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if Mode::of(m.load(Ordering::SeqCst)) == Mode::Cut {
                    continue;
                }
                let link = tokio::spawn(forward(inbound, up.clone(), m.clone()));
                let mut links = l.lock().unwrap_or_else(|p| p.into_inner());
                links.retain(|h| !h.is_finished());
                links.push(link);
            }
        });
        Self {
            port,
            upstream,
            mode,
            links,
            accept,
        }
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where it forwards to.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Changes what it does from now on; [`Mode::Cut`] also severs open links.
    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
        if mode == Mode::Cut {
            for link in self
                .links
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..)
            {
                link.abort();
            }
        }
    }

    /// The network goes down: see [`Mode::Cut`].
    pub fn cut(&self) {
        self.set(Mode::Cut);
    }

    /// The network comes back.
    pub fn restore(&self) {
        self.set(Mode::Pass);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn forward(inbound: TcpStream, upstream: String, mode: Arc<AtomicU8>) {
    let Ok(outbound) = TcpStream::connect(&upstream).await else {
        return;
    };
    let (mut cr, mut cw) = inbound.into_split();
    let (mut sr, mut sw) = outbound.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
        let _ = sw.shutdown().await;
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match sr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if Mode::of(mode.load(Ordering::SeqCst)) != Mode::Pass {
            break; // drop the answer and the connection
        }
        if cw.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    up.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers each read with the same bytes.
    async fn echo() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    /// What one round trip through the proxy gives back (empty: cut off).
    async fn round_trip(proxy: &FaultProxy) -> Vec<u8> {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", proxy.port())).await else {
            return Vec::new();
        };
        if s.write_all(b"ping").await.is_err() {
            return Vec::new();
        }
        let mut buf = [0u8; 4];
        match s.read_exact(&mut buf).await {
            Ok(_) => buf.to_vec(),
            Err(_) => Vec::new(),
        }
    }

    #[tokio::test]
    async fn passes_cuts_restores_and_swallows() {
        let proxy = FaultProxy::start(echo().await).await;
        assert_eq!(round_trip(&proxy).await, b"ping");

        let mut open = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        open.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        open.read_exact(&mut buf).await.unwrap();
        proxy.cut();
        let mut rest = Vec::new();
        assert_eq!(
            open.read_to_end(&mut rest).await.unwrap_or(0),
            0,
            "an open link is severed"
        );
        assert!(
            round_trip(&proxy).await.is_empty(),
            "new connections are refused"
        );

        proxy.restore();
        assert_eq!(round_trip(&proxy).await, b"ping");
        proxy.set(Mode::SwallowAnswers);
        assert!(
            round_trip(&proxy).await.is_empty(),
            "the answer is swallowed"
        );
    }
}

//! `/api/admin/copies…`, `/api/admin/stats/hourly`, `/api/admin/audit…`:
//! reading the ledger and the audit log back, as pages (keyset) or as CSV
//! streamed in chunks — an export holds one chunk in memory and one pool
//! connection per chunk, whatever the ledger's size.

use std::collections::BTreeMap;

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Duration, DurationRound, Utc};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;

use super::access::OperatorSession;
use super::input;
use crate::admin;
use crate::db::{self, audit, ledger_view};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Filters and page of `GET /api/admin/copies` (and `.csv`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopiesQuery {
    client: Option<i64>,
    device: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    overdraft: Option<bool>,
    unverified: Option<bool>,
    limit: Option<usize>,
    cursor: Option<String>,
}

impl CopiesQuery {
    fn filter(&self) -> ledger_view::Filter {
        ledger_view::Filter {
            client: self.client,
            device: self.device.clone().filter(|d| !d.is_empty()),
            from: self.from,
            to: self.to,
            overdraft: self.overdraft.unwrap_or(false),
            unverified: self.unverified.unwrap_or(false),
        }
    }

    fn cursor(&self) -> ApiResult<Option<ledger_view::Cursor>> {
        self.cursor
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(|c| {
                ledger_view::Cursor::decode(c).ok_or_else(|| {
                    ApiError::InvalidRequest("cursor: not one this server handed out".into())
                })
            })
            .transpose()
    }
}

/// A page size: 1 to `admin_page_max`, 50 when not given.
fn page_size(state: &AppState, asked: Option<usize>) -> ApiResult<i64> {
    let max = state.config.admin_page_max;
    match asked.unwrap_or(50.min(max)) {
        n @ 1.. if n <= max => Ok(i64::try_from(n).unwrap_or(50)),
        n => Err(ApiError::InvalidRequest(format!(
            "limit {n}: a page holds 1 to {max} rows (admin_page_max)"
        ))),
    }
}

/// `GET /api/admin/copies`.
pub async fn copies(
    _: OperatorSession,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    let query: CopiesQuery = input::query(&req)?;
    let limit = page_size(&state, query.limit)?;
    let after = query.cursor()?;
    let rows = {
        let mut conn = state.pool.get().await?;
        ledger_view::page(&mut conn, &query.filter(), after, limit).await?
    };
    let next = (i64::try_from(rows.len()).ok() == Some(limit))
        .then(|| rows.last().map(|r| r.cursor().encode()))
        .flatten();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "copies": rows, "next_cursor": next })))
}

/// A CSV download of `chunks`, under `name`.
fn csv(name: &str, chunks: impl Stream<Item = Result<Bytes, ApiError>> + 'static) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((
            actix_web::http::header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        ))
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .streaming(chunks)
}

/// Logs a failure in the middle of an export: the status is sent already,
/// so the download is cut short, and the person sees a failed download.
fn cut(e: ApiError) -> ApiError {
    tracing::warn!(error = %e, "CSV export cut short");
    e
}

/// `GET /api/admin/copies.csv`.
pub async fn copies_csv(
    _: OperatorSession,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    let query: CopiesQuery = input::query(&req)?;
    let filter = query.filter();
    let first = query.cursor()?;
    let chunk = i64::try_from(state.config.csv_chunk_rows).unwrap_or(2000);
    let rows = stream::unfold(Some(first), move |after| {
        let state = state.clone();
        let filter = filter.clone();
        async move {
            let after = after?;
            let page = async {
                let mut conn = state.pool.get().await?;
                Ok::<_, ApiError>(ledger_view::page(&mut conn, &filter, after, chunk).await?)
            };
            match page.await {
                Err(e) => Some((Err(cut(e)), None)),
                Ok(rows) if rows.is_empty() => None,
                Ok(rows) => {
                    let next = rows.last().map(ledger_view::CopyRow::cursor);
                    let text: String = rows.iter().map(ledger_view::csv_line).collect();
                    Some((Ok(Bytes::from(text)), Some(next)))
                }
            }
        }
    });
    let header = stream::once(async { Ok(Bytes::from_static(ledger_view::CSV_HEADER.as_bytes())) });
    Ok(csv("propass-ledger.csv", header.chain(rows)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoidBody {
    reason: String,
}

/// `POST /api/admin/copies/{id}/void`.
pub async fn void(
    session: OperatorSession,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> ApiResult<HttpResponse> {
    let body: VoidBody = input::json(&req, &body)?;
    let id = input::param(&req, "id");
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::InvalidRequest(format!("{id:?} is not a copy id")))?;
    let mut conn = state.pool.get().await?;
    let (client, _) = admin::void_copy(&mut conn, &session.actor(), id, &body.reason).await?;
    let client = admin::flagged(
        admin::client(&mut conn, client).await?,
        state.config.client_low_quota,
    );
    Ok(HttpResponse::Ok().json(serde_json::json!({ "copy_id": id, "client": client })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HourlyQuery {
    hours: Option<u32>,
}

/// Longest span of `stats/hourly`: 30 days.
const MAX_HOURS: u32 = 720;

/// `GET /api/admin/stats/hourly`: copies and quota changes per client and
/// hour, for charts.
pub async fn hourly(
    _: OperatorSession,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    let query: HourlyQuery = input::query(&req)?;
    let hours = query.hours.unwrap_or(72);
    if !(1..=MAX_HOURS).contains(&hours) {
        return Err(ApiError::InvalidRequest(format!(
            "hours {hours}: 1 to {MAX_HOURS}"
        )));
    }
    let now = state.clock.now();
    let from = now.duration_trunc(Duration::hours(1)).unwrap_or(now)
        - Duration::hours(i64::from(hours) - 1);
    let (counts, deltas, clients) = {
        let mut conn = state.pool.get().await?;
        (
            ledger_view::hourly(&mut conn, from).await?,
            ledger_view::hourly_quota_changes(&mut conn, from).await?,
            db::clients::overview(&mut conn, None, true).await?,
        )
    };
    let names: BTreeMap<i64, String> = clients.into_iter().map(|c| (c.id, c.name)).collect();
    type Hours = (Vec<serde_json::Value>, Vec<serde_json::Value>);
    let mut series: BTreeMap<i64, Hours> = BTreeMap::new();
    for c in counts {
        let hour = serde_json::json!({"hour": c.hour, "copies": c.copies});
        series.entry(c.client_id).or_default().0.push(hour);
    }
    for d in deltas {
        let hour = serde_json::json!({"hour": d.hour, "delta": d.delta});
        series.entry(d.client_id).or_default().1.push(hour);
    }
    let series: Vec<_> = series
        .into_iter()
        .map(|(id, (counts, quota_changes))| {
            serde_json::json!({"client_id": id, "name": names.get(&id), "counts": counts, "quota_changes": quota_changes})
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({"from": from, "to": now, "series": series})))
}

/// Filters and page of `GET /api/admin/audit` (and `.csv`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    action: Option<String>,
    subject: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

impl AuditQuery {
    fn before(&self) -> ApiResult<Option<i64>> {
        self.cursor
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(|c| {
                c.parse::<i64>().map_err(|_| {
                    ApiError::InvalidRequest("cursor: not one this server handed out".into())
                })
            })
            .transpose()
    }

    fn filter(&self, before: Option<i64>) -> audit::Filter<'_> {
        audit::Filter {
            action: self.action.as_deref().filter(|a| !a.is_empty()),
            subject: self.subject.as_deref().filter(|s| !s.is_empty()),
            before,
        }
    }
}

/// `GET /api/admin/audit`.
pub async fn audit(
    _: OperatorSession,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    let query: AuditQuery = input::query(&req)?;
    let limit = page_size(&state, query.limit)?;
    let before = query.before()?;
    let entries = {
        let mut conn = state.pool.get().await?;
        audit::list(&mut conn, query.filter(before), limit).await?
    };
    let next = (i64::try_from(entries.len()).ok() == Some(limit))
        .then(|| entries.last().map(|e| e.id.to_string()))
        .flatten();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "entries": entries, "next_cursor": next })))
}

fn audit_line(e: &audit::Entry) -> String {
    format!(
        "{},{},{},{},{},{}\n",
        e.id,
        e.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ledger_view::csv_field(&e.actor),
        ledger_view::csv_field(&e.action),
        ledger_view::csv_field(&e.subject),
        ledger_view::csv_field(&e.detail.to_string())
    )
}

/// `GET /api/admin/audit.csv`.
pub async fn audit_csv(
    _: OperatorSession,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    let query: AuditQuery = input::query(&req)?;
    let first = query.before()?;
    let chunk = i64::try_from(state.config.csv_chunk_rows).unwrap_or(2000);
    let rows = stream::unfold(Some(first), move |before| {
        let state = state.clone();
        let action = query.action.clone();
        let subject = query.subject.clone();
        async move {
            let before = before?;
            let page = async {
                let mut conn = state.pool.get().await?;
                let filter = audit::Filter {
                    action: action.as_deref().filter(|a| !a.is_empty()),
                    subject: subject.as_deref().filter(|s| !s.is_empty()),
                    before,
                };
                Ok::<_, ApiError>(audit::list(&mut conn, filter, chunk).await?)
            };
            match page.await {
                Err(e) => Some((Err(cut(e)), None)),
                Ok(rows) if rows.is_empty() => None,
                Ok(rows) => {
                    let next = rows.last().map(|e| e.id);
                    let text: String = rows.iter().map(audit_line).collect();
                    Some((Ok(Bytes::from(text)), Some(next)))
                }
            }
        }
    });
    let header =
        stream::once(async { Ok(Bytes::from_static(b"id,at,actor,action,subject,detail\n")) });
    Ok(csv("propass-audit.csv", header.chain(rows)))
}

//! The push body, read with its limits enforced *while* it is read: the
//! bytes against `max_body_bytes` as they arrive, and the queue against
//! `max_batch_items` as it is parsed — so an 8 MiB body of `[0,0,0,…]` costs
//! 8 MiB, not millions of JSON values, before it is refused.

use std::fmt;

use actix_web::http::header;
use actix_web::{web, HttpMessage, HttpRequest};
use futures_util::StreamExt;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::{ApiError, ApiResult};

/// The push body: each queue item is kept as its JSON text and parsed on its
/// own later, once (one bad item does not sink the batch).
#[derive(Debug)]
pub struct PushBody {
    /// As sent; checked against the token by the handler.
    pub device_id: String,
    /// The items, at most `max_batch_items` of them.
    pub queue: Vec<Box<RawValue>>,
}

/// What the parser says when the queue grows past its limit.
const TOO_MANY: &str = "propass: too many queue items";

/// Reads and parses the body of `req`.
pub async fn read(
    req: &HttpRequest,
    mut payload: web::Payload,
    max_bytes: usize,
    max_items: usize,
) -> ApiResult<PushBody> {
    check_content_type(req)?;
    let too_large = || {
        ApiError::PayloadTooLarge(format!(
            "request body is larger than the limit of {max_bytes} bytes"
        ))
    };
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if announced.is_some_and(|n| n > max_bytes) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| match e {
            e if super::body_deadline::is_timeout(&e) => ApiError::BodyTimeout,
            e => ApiError::MalformedJson(format!("cannot read the body: {e}")),
        })?;
        if body.len() + chunk.len() > max_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    parse(&body, max_items)
}

/// JSON, as actix's own JSON extractor wants it (`application/json` or `…+json`).
fn check_content_type(req: &HttpRequest) -> ApiResult<()> {
    let ct = req.content_type().to_ascii_lowercase();
    if ct == "application/json" || (ct.starts_with("application/") && ct.ends_with("+json")) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// Parses `{"device_id": …, "queue": […]}`, refusing a queue longer than `max_items`.
pub fn parse(body: &[u8], max_items: usize) -> ApiResult<PushBody> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = BodySeed { max_items }
        .deserialize(&mut de)
        .and_then(|b| de.end().map(|()| b));
    parsed.map_err(|e| {
        if e.to_string().starts_with(TOO_MANY) {
            ApiError::PayloadTooLarge(format!(
                "batch has more than {max_items} items; the limit is {max_items}: push in smaller batches"
            ))
        } else {
            ApiError::MalformedJson(format!("invalid JSON body: {e}"))
        }
    })
}

struct BodySeed {
    max_items: usize,
}

impl<'de> DeserializeSeed<'de> for BodySeed {
    type Value = PushBody;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<PushBody, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for BodySeed {
    type Value = PushBody;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with device_id and queue")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PushBody, A::Error> {
        let (mut device_id, mut queue) = (None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "device_id" => device_id = Some(map.next_value::<String>()?),
                "queue" => queue = Some(map.next_value_seed(QueueSeed(self.max_items))?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(PushBody {
            device_id: device_id.ok_or_else(|| de::Error::missing_field("device_id"))?,
            queue: queue.ok_or_else(|| de::Error::missing_field("queue"))?,
        })
    }
}

/// The queue, cut off at its limit.
struct QueueSeed(usize);

impl<'de> DeserializeSeed<'de> for QueueSeed {
    type Value = Vec<Box<RawValue>>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for QueueSeed {
    type Value = Vec<Box<RawValue>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of queue items")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.0));
        while let Some(item) = seq.next_element::<Box<RawValue>>()? {
            if items.len() == self.0 {
                return Err(de::Error::custom(TOO_MANY));
            }
            items.push(item);
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_past_its_limit_is_refused_while_parsing() {
        let ok = parse(br#"{"device_id": "K", "queue": [1, 2], "extra": {}}"#, 2).unwrap();
        assert_eq!((ok.device_id.as_str(), ok.queue.len()), ("K", 2));
        let err = parse(br#"{"device_id": "K", "queue": [1, 2, 3]}"#, 2).unwrap_err();
        assert!(matches!(err, ApiError::PayloadTooLarge(_)), "{err:?}");
        for bad in [
            &b"[1,2]"[..],
            b"{\"queue\": []}",
            b"{\"device_id\": \"K\", \"queue\": [",
            b"{} x",
        ] {
            let err = parse(bad, 2).unwrap_err();
            assert!(matches!(err, ApiError::MalformedJson(_)), "{err:?}");
        }
    }
}

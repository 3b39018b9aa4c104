//! Who is calling: the peer's address, or — only when the peer is a
//! configured trusted proxy — the client address the proxy forwarded, in
//! the one header the proxies are configured to set. Anyone else's
//! forwarding headers are ignored, and so is the other header even from a
//! proxy (a proxy passes a client's own header through): a client could
//! otherwise pick a fresh address for every guess and walk past the login
//! throttle.

use std::net::IpAddr;

use actix_web::http::header;
use actix_web::HttpRequest;

use crate::config::ProxyHeader;

/// The client's address as the throttle should count it.
pub fn client_ip(req: &HttpRequest, trusted: &[IpAddr], which: ProxyHeader) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let hops = forwarded_for(req, which);
    // From the right: each trusted proxy appended the address it saw; the
    // first one that is not a trusted proxy is the client.
    let client = hops.iter().rev().find(|ip| !trusted.contains(ip));
    Some(client.or(hops.first()).copied().unwrap_or(peer))
}

/// The addresses of `Forwarded: for=…` (RFC 7239) or of `X-Forwarded-For`.
fn forwarded_for(req: &HttpRequest, which: ProxyHeader) -> Vec<IpAddr> {
    let all = |name: header::HeaderName| -> String {
        req.headers()
            .get_all(name)
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
    };
    if which == ProxyHeader::Forwarded {
        return all(header::FORWARDED)
            .split(',')
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| parse_node(v))?
                })
            })
            .collect();
    }
    all(header::HeaderName::from_static("x-forwarded-for"))
        .split(',')
        .filter_map(parse_node)
        .collect()
}

/// `192.0.2.60`, `"192.0.2.60:4711"`, `"[2001:db8::1]:4711"`; `None` for
/// `unknown` or obfuscated identifiers.
fn parse_node(v: &str) -> Option<IpAddr> {
    let v = v.trim().trim_matches('"');
    if let Ok(ip) = v.parse() {
        return Some(ip);
    }
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    v.rsplit_once(':')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;
    use ProxyHeader::{Forwarded, XForwardedFor};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_addresses_count_only_from_a_trusted_proxy() {
        let proxy = "10.0.0.9:443".parse().unwrap();
        let req = TestRequest::default()
            .peer_addr(proxy)
            .insert_header(("x-forwarded-for", "203.0.113.7, 10.0.0.8"))
            .to_http_request();
        assert_eq!(
            client_ip(&req, &[], XForwardedFor),
            Some(ip("10.0.0.9")),
            "untrusted: the peer"
        );
        assert_eq!(
            client_ip(&req, &[ip("10.0.0.9")], XForwardedFor),
            Some(ip("10.0.0.8"))
        );
        assert_eq!(
            client_ip(&req, &[ip("10.0.0.9"), ip("10.0.0.8")], XForwardedFor),
            Some(ip("203.0.113.7"))
        );

        let req = TestRequest::default()
            .peer_addr(proxy)
            .insert_header((
                "forwarded",
                r#"for="[2001:db8::1]:4711";proto=https, for=192.0.2.60"#,
            ))
            .to_http_request();
        assert_eq!(
            client_ip(&req, &[ip("10.0.0.9")], Forwarded),
            Some(ip("192.0.2.60"))
        );
        assert_eq!(
            client_ip(&req, &[ip("10.0.0.9"), ip("192.0.2.60")], Forwarded),
            Some(ip("2001:db8::1"))
        );
    }

    #[test]
    fn a_client_cannot_name_its_address_past_the_proxy() {
        // HAProxy's `option forwardfor` appends to X-Forwarded-For and
        // passes the client's own `Forwarded` through untouched.
        let req = TestRequest::default()
            .peer_addr("10.0.0.9:443".parse().unwrap())
            .insert_header(("forwarded", "for=198.51.100.1"))
            .insert_header(("x-forwarded-for", "198.51.100.2, 203.0.113.7"))
            .to_http_request();
        assert_eq!(
            client_ip(&req, &[ip("10.0.0.9")], XForwardedFor),
            Some(ip("203.0.113.7")),
            "the address the proxy appended, not the client's own entries"
        );
        // A proxy set up for `Forwarded` that saw no such header: the
        // client's X-Forwarded-For does not count either.
        assert_eq!(
            client_ip(&req, &[ip("10.0.0.9")], Forwarded),
            Some(ip("198.51.100.1"))
        );
        let only_xff = TestRequest::default()
            .peer_addr("10.0.0.9:443".parse().unwrap())
            .insert_header(("x-forwarded-for", "198.51.100.2"))
            .to_http_request();
        assert_eq!(
            client_ip(&only_xff, &[ip("10.0.0.9")], Forwarded),
            Some(ip("10.0.0.9")),
            "nothing forwarded in the configured header: the proxy itself"
        );
    }
}

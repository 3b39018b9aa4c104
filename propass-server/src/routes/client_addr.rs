//! Who is calling: the peer's address, or — only when the peer is a
//! configured trusted proxy — the client address the proxy forwarded.
//! Anyone else's `Forwarded` / `X-Forwarded-For` is ignored: a client could
//! otherwise pick a fresh address for every guess and walk past the login
//! throttle.

use std::net::IpAddr;

use actix_web::http::header;
use actix_web::HttpRequest;

/// The client's address as the throttle should count it.
pub fn client_ip(req: &HttpRequest, trusted: &[IpAddr]) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let hops = forwarded_for(req);
    // From the right: each trusted proxy appended the address it saw; the
    // first one that is not a trusted proxy is the client.
    let client = hops.iter().rev().find(|ip| !trusted.contains(ip));
    Some(client.or(hops.first()).copied().unwrap_or(peer))
}

/// The addresses of `Forwarded: for=…` (RFC 7239), else of `X-Forwarded-For`.
fn forwarded_for(req: &HttpRequest) -> Vec<IpAddr> {
    let all = |name: header::HeaderName| -> String {
        req.headers()
            .get_all(name)
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
    };
    let forwarded = all(header::FORWARDED);
    if !forwarded.is_empty() {
        return forwarded
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
            client_ip(&req, &[]),
            Some(ip("10.0.0.9")),
            "untrusted: the peer"
        );
        assert_eq!(client_ip(&req, &[ip("10.0.0.9")]), Some(ip("10.0.0.8")));
        assert_eq!(
            client_ip(&req, &[ip("10.0.0.9"), ip("10.0.0.8")]),
            Some(ip("203.0.113.7"))
        );

        let req = TestRequest::default()
            .peer_addr(proxy)
            .insert_header((
                "forwarded",
                r#"for="[2001:db8::1]:4711";proto=https, for=192.0.2.60"#,
            ))
            .to_http_request();
        assert_eq!(client_ip(&req, &[ip("10.0.0.9")]), Some(ip("192.0.2.60")));
        assert_eq!(
            client_ip(&req, &[ip("10.0.0.9"), ip("192.0.2.60")]),
            Some(ip("2001:db8::1"))
        );
    }
}

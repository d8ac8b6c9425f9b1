//! `X-Twilio-Signature`: HMAC-SHA1 over the request URL plus the sorted form parameters.
//!
//! Algorithm from Twilio's webhook security page
//! (<https://www.twilio.com/docs/usage/webhooks/webhooks-security>) and twilio-node's
//! `validateRequest`: `base64(HMAC-SHA1(auth_token, url + name1 + value1 + name2 + value2 …))`,
//! names sorted by byte order (case-sensitive), repeated names with their values sorted.
//! [`sign`] is what Twilio computes (our simulator uses it); [`matches()`] is what a server checks,
//! in constant time, across the URL variants Twilio's own validators accept (with and without the
//! default port).

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// The header Twilio signs its requests with.
pub const HEADER: &str = "X-Twilio-Signature";

/// The string Twilio signs: the URL followed by every parameter `name + value`, sorted.
pub fn canonical(url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()).then(a.1.cmp(&b.1)));
    sorted.dedup();
    let mut data = String::with_capacity(
        url.len() + sorted.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>(),
    );
    data.push_str(url);
    for (name, value) in sorted {
        data.push_str(name);
        data.push_str(value);
    }
    data
}

fn mac(auth_token: &str, data: &str) -> Hmac<Sha1> {
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(data.as_bytes());
    mac
}

/// The base64 signature Twilio would send for `url` and form `params`.
pub fn sign(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let digest = mac(auth_token, &canonical(url, params))
        .finalize()
        .into_bytes();
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// The URL with its explicit default port removed, and with it added: Twilio's signing side is not
/// consistent about ports, so validators try both. `wss` uses 443, like `https`.
pub fn port_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_owned()];
    let Some(scheme_end) = url.find("://") else {
        return out;
    };
    let default = match url[..scheme_end].to_ascii_lowercase().as_str() {
        "https" | "wss" => "443",
        "http" | "ws" => "80",
        _ => return out,
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| authority_start + i);
    let authority = &url[authority_start..authority_end];
    // A port follows the last ':' unless that ':' is inside an IPv6 literal.
    let port_at = authority
        .rfind(':')
        .filter(|&i| !authority[i..].contains(']'));
    let (prefix, rest) = (&url[..authority_start], &url[authority_end..]);
    match port_at {
        None => out.push(format!("{prefix}{authority}:{default}{rest}")),
        Some(i) if &authority[i + 1..] == default => {
            out.push(format!("{prefix}{}{rest}", &authority[..i]));
        }
        Some(_) => {}
    }
    out
}

/// Whether `signature` is valid for `url` and `params` under `auth_token`, trying the port
/// variants. The comparison is constant-time.
pub fn matches(auth_token: &str, url: &str, params: &[(String, String)], signature: &str) -> bool {
    let Ok(expected) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    port_variants(url).iter().any(|candidate| {
        mac(auth_token, &canonical(candidate, params))
            .verify_slice(&expected)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// twilio-node `spec/validation.spec.js`.
    #[test]
    fn official_form_vector() {
        let params = p(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]);
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(sign("12345", url, &params), "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        assert!(matches(
            "12345",
            url,
            &params,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert!(!matches(
            "12346",
            url,
            &params,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert!(!matches(
            "12345",
            url,
            &params[1..],
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
    }

    /// The `bodySHA256` vector that only validates through the default-port variant.
    #[test]
    fn official_vector_needing_the_default_port() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256=44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
        assert!(matches("12345", url, &[], "Ldidvp12m26NI7eqEvxnEpkd9Hc="));
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
        assert!(matches("12345", url, &[], "a9nBmqA0ju/hNViExpshrM61xv4="));
    }

    /// The WebSocket vectors in the shared protocol notes (§5.1).
    #[test]
    fn websocket_vectors() {
        assert_eq!(
            sign("12345", "wss://example.com/ws?token=abc&foo=bar", &[]),
            "wwBh7j3VdG6m6VtFADyihrw7AYk="
        );
        assert_eq!(
            sign(
                "12345",
                "wss://example.com/ws",
                &p(&[("token", "abc"), ("foo", "bar")])
            ),
            "bK75SJpzG4xThNyqsCx8yah0Ebw="
        );
        assert_eq!(
            sign("12345", "wss://example.com/ws", &[]),
            "HXrgvHt0qTHu33oSxSjpOvWtO60="
        );
    }

    #[test]
    fn sorting_is_by_bytes_not_locale() {
        // `CallSid` sorts before `Called` in byte order ('S' < 'e').
        assert_eq!(
            canonical("u", &p(&[("Called", "1"), ("CallSid", "2")])),
            "uCallSid2Called1"
        );
    }

    #[test]
    fn port_variants_add_and_remove_the_default_port() {
        assert_eq!(
            port_variants("wss://h.example/ws?a=1"),
            vec!["wss://h.example/ws?a=1", "wss://h.example:443/ws?a=1"]
        );
        assert_eq!(
            port_variants("https://h.example:443/x"),
            vec!["https://h.example:443/x", "https://h.example/x"]
        );
        assert_eq!(port_variants("http://h:8080/x"), vec!["http://h:8080/x"]);
    }
}

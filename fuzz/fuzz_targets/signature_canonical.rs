//! Arbitrary auth token, URL and form parameters: the signature functions never panic, our own
//! signatures always verify (in any parameter order, and over any port variant of the URL), and
//! the canonical string starts with the URL and ignores order and exact duplicates.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaybot::twilio::signature::{canonical, matches, port_variants, sign};

fuzz_target!(|input: (String, String, Vec<(String, String)>)| {
    let (token, url, params) = input;

    let data = canonical(&url, &params);
    assert!(data.starts_with(&url));

    let mut reordered = params.clone();
    reordered.reverse();
    reordered.rotate_left(params.len() / 2);
    assert_eq!(canonical(&url, &reordered), data);

    let mut doubled = params.clone();
    doubled.extend(params.iter().cloned());
    assert_eq!(canonical(&url, &doubled), data);

    let signature = sign(&token, &url, &params);
    assert!(matches(&token, &url, &params, &signature));
    assert!(matches(&token, &url, &reordered, &signature));
    assert!(matches(&token, &url, &params, &format!(" {signature}\n")));

    let variants = port_variants(&url);
    assert_eq!(variants.first(), Some(&url));
    assert!(variants.len() <= 2);
    for variant in &variants {
        assert!(matches(
            &token,
            &url,
            &params,
            &sign(&token, variant, &params)
        ));
    }

    // Garbage signatures (not base64, wrong length) are just "no".
    let _ = matches(&token, &url, &params, &token);
    let _ = matches(&token, &url, &params, &url);
});

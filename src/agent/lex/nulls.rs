//! Lex's JSON `null`s, made harmless before the SDK reads a response.
//!
//! Lex reports every unfilled slot as `null` (`"slots": {"PickupDate": null}`, in
//! `sessionState.intent` and in each of `interpretations[].intent`), so an ordinary turn of any
//! bot with slots carries some. `aws-sdk-lexruntimev2` (1.120) models `slots` as a *dense* map
//! (`HashMap<String, Slot>`), and its generated deserializer
//! (`src/protocol_serde/shape_slots.rs`, `de_slots`) answers a `null` value with
//! `DeserializeError::custom("dense map cannot contain null values")`: the whole `RecognizeText`
//! call fails with `SdkError::ServiceError(Unhandled)` for an HTTP 200 that Lex has already
//! processed. Every other map and list of the crate (`sessionAttributes`, `requestAttributes`,
//! `subSlots`, `messages`, `resolvedValues`, …) has the same rule ("dense map/list cannot contain
//! null values").
//!
//! [`DropNulls`] is an SDK interceptor that rewrites a successful response's JSON body before
//! deserialisation, dropping every `null`: object members whose value is `null` and `null` list
//! entries. For the SDK that changes nothing else: in its restJson1 deserializers a `null`
//! structure member reads exactly like an absent one (`None`, or the default it fills in for a
//! required member), and an unfilled slot becomes an absent key, which is what "not filled"
//! means to us. Chosen over salvaging `raw_response()` after the error with a second, hand-written
//! model of the response: one parse, one model (the SDK's), one code path for every turn, and it
//! also covers nulls in places nobody has seen yet. Bodies that are not JSON, and error
//! responses, pass through untouched (the SDK reports them as before).
//!
//! The hook is synchronous and sees the body before the orchestrator has read it (it is still a
//! stream), so the body is wrapped in one that reads the stream to its end, then yields
//! the rewritten JSON as one frame. The SDK buffers a non-streaming response whole anyway.

use std::{
    pin::Pin,
    task::{ready, Context, Poll},
};

use aws_sdk_lexruntimev2::{
    config::{
        interceptors::BeforeDeserializationInterceptorContextMut, ConfigBag, Intercept,
        RuntimeComponents,
    },
    primitives::SdkBody,
};
use bytes::Bytes;
use http_body::{Body, Frame};
use serde_json::Value;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The interceptor: see the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct DropNulls;

impl Intercept for DropNulls {
    fn name(&self) -> &'static str {
        "relaybot::agent::lex::DropNulls"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let response = context.response_mut();
        if !response.status().is_success() {
            return Ok(());
        }
        let body = std::mem::replace(response.body_mut(), SdkBody::taken());
        let body = match body.bytes() {
            Some(bytes) => SdkBody::from(without_nulls(bytes)),
            None => SdkBody::from_body_1_x(WithoutNulls {
                inner: Some(Box::pin(body)),
                buffered: Vec::new(),
            }),
        };
        *response.body_mut() = body;
        // The length changes; nothing downstream needs it (the body is read to its end).
        response.headers_mut().remove("content-length");
        Ok(())
    }
}

/// A response body read to its end, then yielded once without its `null`s.
struct WithoutNulls {
    inner: Option<Pin<Box<SdkBody>>>,
    buffered: Vec<u8>,
}

impl Body for WithoutNulls {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers carry nothing the JSON deserializer reads.
                    if let Ok(data) = frame.into_data() {
                        this.buffered.extend_from_slice(&data);
                    }
                }
                Some(Err(error)) => {
                    this.inner = None;
                    return Poll::Ready(Some(Err(error)));
                }
                None => {
                    this.inner = None;
                    let body = without_nulls(&std::mem::take(&mut this.buffered));
                    return Poll::Ready(Some(Ok(Frame::data(body))));
                }
            }
        }
    }
}

/// `json` without its `null`s; anything that is not JSON comes back as it was.
pub fn without_nulls(json: &[u8]) -> Bytes {
    if !json.windows(4).any(|w| w == b"null") {
        return Bytes::copy_from_slice(json);
    }
    let Ok(mut value) = serde_json::from_slice::<Value>(json) else {
        return Bytes::copy_from_slice(json);
    };
    drop_nulls(&mut value);
    match serde_json::to_vec(&value) {
        Ok(rewritten) => Bytes::from(rewritten),
        Err(_) => Bytes::copy_from_slice(json),
    }
}

fn drop_nulls(value: &mut Value) {
    match value {
        Value::Object(members) => {
            members.retain(|_, v| !v.is_null());
            members.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => {
            items.retain(|v| !v.is_null());
            items.iter_mut().for_each(drop_nulls);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nulls_go_everywhere_and_the_rest_stays() {
        let body = br#"{"sessionState":{"intent":{"name":"OrderFlowers","slots":{"FlowerType":null,
            "PickupDate":{"value":{"originalValue":"tomorrow","interpretedValue":null,
            "resolvedValues":["2025-01-02",null]}}}},"sessionAttributes":{"a":null,"b":"null"}},
            "messages":[null,{"contentType":"PlainText","content":"What kind?"}]}"#;
        let out: Value = serde_json::from_slice(&without_nulls(body)).unwrap();
        assert_eq!(
            out,
            serde_json::json!({
                "sessionState": {
                    "intent": {"name": "OrderFlowers", "slots": {
                        "PickupDate": {"value": {"originalValue": "tomorrow",
                                                 "resolvedValues": ["2025-01-02"]}}}},
                    "sessionAttributes": {"b": "null"}
                },
                "messages": [{"contentType": "PlainText", "content": "What kind?"}]
            })
        );
    }

    #[test]
    fn bodies_without_nulls_or_not_json_pass_unchanged() {
        let plain = br#"{"messages":[],"sessionId":"CA1"}"#;
        assert_eq!(&without_nulls(plain)[..], plain);
        let broken = b"<html>null</html>";
        assert_eq!(&without_nulls(broken)[..], broken);
    }
}

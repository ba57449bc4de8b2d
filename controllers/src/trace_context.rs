//! W3C trace context on the operator's outgoing requests: the `traceparent` (and
//! `tracestate`) of the current span, so that a crew run a workflow step starts joins the
//! step's trace. Through the global propagator, which the operator sets only when it exports
//! traces: otherwise nothing is added.

use opentelemetry::propagation::{Injector, TextMapPropagator};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The trace context headers of the current span (empty when traces are not exported).
pub fn current() -> HeaderMap {
    let cx = tracing::Span::current().context();
    let mut headers = HeaderMap::new();
    opentelemetry::global::get_text_map_propagator(|p| inject(p, &cx, &mut headers));
    headers
}

/// Writes the trace context of `cx` into `headers`: only the propagator's own fields, and
/// nothing without a valid span.
pub fn inject(propagator: &dyn TextMapPropagator, cx: &opentelemetry::Context, headers: &mut HeaderMap) {
    propagator.inject_context(cx, &mut HeaderInjector(headers));
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty `tracestate` says nothing: leave it out.
        if value.is_empty() {
            return;
        }
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(&value)) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

    #[test]
    fn only_traceparent_is_written_and_only_for_a_valid_span() {
        let propagator = opentelemetry_sdk::propagation::TraceContextPropagator::new();
        let sc = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            SpanId::from_hex("b7ad6b7169203331").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(sc);
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer t"));
        inject(&propagator, &cx, &mut headers);
        assert_eq!(headers.get("traceparent").unwrap(), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        assert_eq!(headers.len(), 2, "{headers:?}");
        let mut none = HeaderMap::new();
        inject(&propagator, &opentelemetry::Context::new(), &mut none);
        assert!(none.is_empty());
        // Without traces exported (no global propagator) nothing is added.
        assert!(current().is_empty());
    }
}

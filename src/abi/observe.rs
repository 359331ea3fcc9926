//! Timing guest callbacks: [`guest`](super::guest) brackets every callback it dispatches with
//! the filter's [`CallbackObserver`] (set in
//! [`PluginInfo::observer`](super::PluginInfo::observer)). With no observer, no clock is read.

#![forbid(unsafe_code)]

use std::fmt;
use std::sync::Arc;

/// A guest callback, as the host dispatches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Callback {
    /// `proxy_on_vm_start`.
    VmStart,
    /// `proxy_on_configure`.
    Configure,
    /// `proxy_on_context_create` of a stream context.
    ContextCreate,
    /// `proxy_on_request_headers`.
    RequestHeaders,
    /// `proxy_on_request_body`.
    RequestBody,
    /// `proxy_on_request_trailers`.
    RequestTrailers,
    /// `proxy_on_response_headers`.
    ResponseHeaders,
    /// `proxy_on_response_body`.
    ResponseBody,
    /// `proxy_on_response_trailers`.
    ResponseTrailers,
    /// `proxy_on_done`.
    Done,
    /// `proxy_on_log`.
    Log,
    /// `proxy_on_delete`.
    Delete,
    /// `proxy_on_tick`.
    Tick,
    /// `proxy_on_queue_ready`.
    QueueReady,
    /// `proxy_on_http_call_response`.
    HttpCallResponse,
    /// `proxy_on_foreign_function`.
    ForeignFunction,
    /// `proxy_on_new_connection`.
    NewConnection,
    /// `proxy_on_downstream_data`.
    DownstreamData,
    /// `proxy_on_upstream_data`.
    UpstreamData,
    /// `proxy_on_downstream_connection_close`.
    DownstreamConnectionClose,
    /// `proxy_on_upstream_connection_close`.
    UpstreamConnectionClose,
}

impl Callback {
    /// Every callback, in declaration order (`ALL[c.index()] == c`).
    pub const ALL: [Callback; 21] = [
        Callback::VmStart,
        Callback::Configure,
        Callback::ContextCreate,
        Callback::RequestHeaders,
        Callback::RequestBody,
        Callback::RequestTrailers,
        Callback::ResponseHeaders,
        Callback::ResponseBody,
        Callback::ResponseTrailers,
        Callback::Done,
        Callback::Log,
        Callback::Delete,
        Callback::Tick,
        Callback::QueueReady,
        Callback::HttpCallResponse,
        Callback::ForeignFunction,
        Callback::NewConnection,
        Callback::DownstreamData,
        Callback::UpstreamData,
        Callback::DownstreamConnectionClose,
        Callback::UpstreamConnectionClose,
    ];

    /// Its position in [`Self::ALL`] (for per-callback tables).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The callback's name without `proxy_on_` (the `hook` label of the metrics).
    pub fn label(self) -> &'static str {
        match self {
            Callback::VmStart => "vm_start",
            Callback::Configure => "configure",
            Callback::ContextCreate => "context_create",
            Callback::RequestHeaders => "request_headers",
            Callback::RequestBody => "request_body",
            Callback::RequestTrailers => "request_trailers",
            Callback::ResponseHeaders => "response_headers",
            Callback::ResponseBody => "response_body",
            Callback::ResponseTrailers => "response_trailers",
            Callback::Done => "done",
            Callback::Log => "log",
            Callback::Delete => "delete",
            Callback::Tick => "tick",
            Callback::QueueReady => "queue_ready",
            Callback::HttpCallResponse => "http_call_response",
            Callback::ForeignFunction => "foreign_function",
            Callback::NewConnection => "new_connection",
            Callback::DownstreamData => "downstream_data",
            Callback::UpstreamData => "upstream_data",
            Callback::DownstreamConnectionClose => "downstream_connection_close",
            Callback::UpstreamConnectionClose => "upstream_connection_close",
        }
    }
}

/// Times every guest callback of one filter (whether it returned or trapped): [`start`] right
/// before the callback, [`finish`] right after it, on the thread that ran it. The observer
/// chooses the clock. Keep both cheap.
///
/// [`start`]: CallbackObserver::start
/// [`finish`]: CallbackObserver::finish
pub trait CallbackObserver: Send + Sync {
    /// A timestamp, in the observer's own clock, taken before a callback.
    fn start(&self) -> u64;
    /// `callback` ran from `started` (a value of [`Self::start`]) until now.
    fn finish(&self, callback: Callback, started: u64);
}

/// A filter's optional [`CallbackObserver`].
#[derive(Clone, Default)]
pub struct Observer(pub Option<Arc<dyn CallbackObserver>>);

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Observer(Some)" } else { "Observer(None)" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_and_labels_are_unique() {
        for (i, c) in Callback::ALL.iter().enumerate() {
            assert_eq!(c.index(), i, "{c:?}");
        }
        let mut labels: Vec<_> = Callback::ALL.iter().map(|c| c.label()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), Callback::ALL.len());
    }
}

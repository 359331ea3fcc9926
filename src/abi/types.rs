//! The ABI's enumerations (spec section "Types"), with checked conversions from guest integers.

#![forbid(unsafe_code)]

/// `proxy_status_t`: what every host function returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The requested item does not exist.
    NotFound = 1,
    /// An argument is invalid (unknown id, bad range, …).
    BadArgument = 2,
    /// Serialization failed.
    SerializationFailure = 3,
    /// Input could not be parsed.
    ParseFailure = 4,
    /// A pointer or length points outside the guest's memory.
    InvalidMemoryAccess = 6,
    /// A queue is empty.
    Empty = 7,
    /// A compare-and-swap did not match.
    CasMismatch = 8,
    /// The host failed.
    InternalFailure = 10,
    /// The host does not implement this.
    Unimplemented = 12,
}

/// The result of a host call body: `Err(status)` ends the call with that status.
pub type HostResult<T = ()> = Result<T, Status>;

/// A bound that refused a shared-data or queue write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedBound {
    /// The key and value (or the queue item) are larger than
    /// `max_value_bytes` ([`super::shared::SharedLimits`]): `BAD_ARGUMENT`.
    ValueSize,
    /// The `vm_id` would hold more than `max_bytes`: `INTERNAL_FAILURE`.
    TotalSize,
    /// The queue already holds [`super::shared::MAX_QUEUE_ITEMS`]: `INTERNAL_FAILURE`.
    QueueItems,
}

impl SharedBound {
    /// Every bound, in declaration order (`ALL[b.index()] == b`).
    pub const ALL: [SharedBound; 3] = [SharedBound::ValueSize, SharedBound::TotalSize, SharedBound::QueueItems];

    /// Its position in [`Self::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The `reason` label of `ats_wasm_shared_data_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            SharedBound::ValueSize => "value_size",
            SharedBound::TotalSize => "total_size",
            SharedBound::QueueItems => "queue_items",
        }
    }

    /// The status the guest gets. The spec lists none for "no room" (only `OK`,
    /// `CAS_MISMATCH`/`NOT_FOUND` and `INVALID_MEMORY_ACCESS`); `CAS_MISMATCH`, which the Rust
    /// SDK would hand back as an error, would send a compare-and-swap loop spinning. A value
    /// that can never fit is the caller's argument (`BAD_ARGUMENT`); a full store is the
    /// host's failure to do it now (`INTERNAL_FAILURE`, as for a full queue).
    pub fn status(self) -> Status {
        match self {
            SharedBound::ValueSize => Status::BadArgument,
            SharedBound::TotalSize | SharedBound::QueueItems => Status::InternalFailure,
        }
    }
}

/// `proxy_log_level_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Most verbose.
    Trace = 0,
    /// Debugging.
    Debug = 1,
    /// Information.
    Info = 2,
    /// Warnings.
    Warn = 3,
    /// Errors.
    Error = 4,
    /// Critical errors.
    Critical = 5,
}

impl LogLevel {
    /// Converts a guest value; unknown values are `None` (the call answers `BAD_ARGUMENT`).
    pub fn from_raw(v: i32) -> Option<Self> {
        Some(match v {
            0 => Self::Trace,
            1 => Self::Debug,
            2 => Self::Info,
            3 => Self::Warn,
            4 => Self::Error,
            5 => Self::Critical,
            _ => return None,
        })
    }
}

/// `proxy_map_type_t`: which header map a call is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapType {
    /// Request headers.
    RequestHeaders = 0,
    /// Request trailers.
    RequestTrailers = 1,
    /// Response headers.
    ResponseHeaders = 2,
    /// Response trailers.
    ResponseTrailers = 3,
    /// gRPC initial metadata.
    GrpcInitialMetadata = 4,
    /// gRPC trailing metadata.
    GrpcTrailingMetadata = 5,
    /// Headers of an HTTP call's response.
    HttpCallResponseHeaders = 6,
    /// Trailers of an HTTP call's response.
    HttpCallResponseTrailers = 7,
}

impl MapType {
    /// Converts a guest value; unknown values are `None` (`BAD_ARGUMENT`).
    pub fn from_raw(v: i32) -> Option<Self> {
        Some(match v {
            0 => Self::RequestHeaders,
            1 => Self::RequestTrailers,
            2 => Self::ResponseHeaders,
            3 => Self::ResponseTrailers,
            4 => Self::GrpcInitialMetadata,
            5 => Self::GrpcTrailingMetadata,
            6 => Self::HttpCallResponseHeaders,
            7 => Self::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// `proxy_buffer_type_t`: which buffer a call is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BufferType {
    /// Request body.
    HttpRequestBody = 0,
    /// Response body.
    HttpResponseBody = 1,
    /// L4 downstream data.
    DownstreamData = 2,
    /// L4 upstream data.
    UpstreamData = 3,
    /// Body of an HTTP call's response.
    HttpCallResponseBody = 4,
    /// gRPC message.
    GrpcCallMessage = 5,
    /// The VM configuration (readable in `proxy_on_vm_start`).
    VmConfiguration = 6,
    /// The plugin configuration (readable in `proxy_on_configure`).
    PluginConfiguration = 7,
    /// Arguments of a foreign function call.
    ForeignFunctionArguments = 8,
}

impl BufferType {
    /// Converts a guest value; unknown values are `None` (`BAD_ARGUMENT`).
    pub fn from_raw(v: i32) -> Option<Self> {
        Some(match v {
            0 => Self::HttpRequestBody,
            1 => Self::HttpResponseBody,
            2 => Self::DownstreamData,
            3 => Self::UpstreamData,
            4 => Self::HttpCallResponseBody,
            5 => Self::GrpcCallMessage,
            6 => Self::VmConfiguration,
            7 => Self::PluginConfiguration,
            8 => Self::ForeignFunctionArguments,
            _ => return None,
        })
    }
}

/// `proxy_action_t`: what a stream callback asks the host to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Go on with the stream.
    Continue,
    /// Hold the stream until the guest continues it.
    Pause,
}

impl Action {
    /// Converts a callback's return value. The spec defines 0 and 1; anything else is treated as
    /// `Continue`, like other hosts do, so a sloppy guest cannot hang a transaction.
    pub fn from_raw(v: i32) -> Self {
        if v == 1 { Self::Pause } else { Self::Continue }
    }
}

/// `proxy_stream_type_t`: which direction of a stream `proxy_continue_stream` /
/// `proxy_close_stream` are about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamType {
    /// The HTTP request.
    HttpRequest = 0,
    /// The HTTP response.
    HttpResponse = 1,
    /// L4 downstream.
    Downstream = 2,
    /// L4 upstream.
    Upstream = 3,
}

impl StreamType {
    /// Converts a guest value; unknown values are `None` (`BAD_ARGUMENT`).
    pub fn from_raw(v: i32) -> Option<Self> {
        Some(match v {
            0 => Self::HttpRequest,
            1 => Self::HttpResponse,
            2 => Self::Downstream,
            3 => Self::Upstream,
            _ => return None,
        })
    }
}

/// `proxy_peer_type_t`: who closed an L4 connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerType {
    /// Not known.
    Unknown = 0,
    /// The proxy closed it.
    Local = 1,
    /// The peer closed it.
    Remote = 2,
}

/// `proxy_metric_type_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricType {
    /// A monotonically increasing count.
    Counter = 0,
    /// A value that goes up and down.
    Gauge = 1,
    /// A distribution of recorded values.
    Histogram = 2,
}

impl MetricType {
    /// Converts a guest value; unknown values are `None` (`BAD_ARGUMENT`).
    pub fn from_raw(v: i32) -> Option<Self> {
        Some(match v {
            0 => Self::Counter,
            1 => Self::Gauge,
            2 => Self::Histogram,
            _ => return None,
        })
    }
}

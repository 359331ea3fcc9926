//! `ticker`: a Proxy-Wasm filter whose root context asks for a tick every `period_ms`
//! (default 100) and counts ticks in process-wide shared data (`ticker.count`, an 8-byte
//! little-endian counter updated with compare-and-swap); every response gets `x-ticks: <count>`.
//!
//! A request with an `x-hold` header is paused (`Action::Pause`) until the next tick of the
//! same VM resumes it (`proxy_set_effective_context` + `proxy_continue_stream`); its response
//! gets `x-held: released`.
//!
//! The root context also registers the shared queue `ticker.queue`; a request with
//! `x-enqueue: <value>` enqueues the value, the registering VM's `proxy_on_queue_ready` dequeues
//! it into shared data (`ticker.last`), and later responses show it as `x-last-dequeued`. (In `transaction` isolation ticks run in a separate per-thread VM,
//! which cannot resume other VMs' requests: don't use `x-hold` there.)
//!
//! A request with `x-wait` registers the shared queue `ticker.wait` from its own VM (which then
//! owns the queue) and is paused until something arrives there: a request with
//! `x-signal: <value>` enqueues the value, the waiting VM's `proxy_on_queue_ready` dequeues it
//! and resumes its waiting requests, whose responses get `x-signaled: <value>`. This works in
//! both isolation modes: in `transaction` isolation the queue belongs to the waiting
//! transaction's own VM.
//!
//! It also defines three guest metrics (process-wide, shared by all its VMs), exported by
//! ats-wasm's Prometheus endpoint: the counter `ticker.ticks` (ticks of all VMs), the gauge
//! `ticker.held_requests` (requests held right now) and the histogram `ticker.tick_interval_ms`
//! (milliseconds between two ticks of one VM).
//!
//! ```json
//! {"period_ms": 100}
//! ```

use std::cell::{Cell, RefCell};
use std::time::{Duration, SystemTime};

use log::{error, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};
use serde::Deserialize;

const KEY: &str = "ticker.count";
const QUEUE: &str = "ticker.queue";
const LAST: &str = "ticker.last";
const WAIT_QUEUE: &str = "ticker.wait";

thread_local! {
    /// Context ids of the requests this VM holds until its next tick.
    static HELD: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// The id of `ticker.wait` once this VM registered it, the context ids of the requests
    /// waiting for an item there, and the last item that arrived.
    static WAIT: RefCell<(Option<u32>, Vec<u32>, Option<Vec<u8>>)> = const { RefCell::new((None, Vec::new(), None)) };
    /// This VM's metric ids, once defined in `on_configure`.
    static METRICS: Cell<Option<Metrics>> = const { Cell::new(None) };
    /// When this VM last ticked.
    static LAST_TICK: Cell<Option<SystemTime>> = const { Cell::new(None) };
}

/// The ids of the metrics this filter defines.
#[derive(Clone, Copy)]
struct Metrics {
    ticks: u32,
    held: u32,
    interval: u32,
}

impl Metrics {
    fn define() -> Result<Self, Status> {
        Ok(Metrics {
            ticks: hostcalls::define_metric(MetricType::Counter, "ticker.ticks")?,
            held: hostcalls::define_metric(MetricType::Gauge, "ticker.held_requests")?,
            interval: hostcalls::define_metric(MetricType::Histogram, "ticker.tick_interval_ms")?,
        })
    }

    fn get() -> Option<Self> {
        METRICS.with(Cell::get)
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::new(TickerRoot));
}}

fn default_period() -> u64 {
    100
}

#[derive(Deserialize)]
struct Config {
    #[serde(default = "default_period")]
    period_ms: u64,
}

struct TickerRoot;

impl Context for TickerRoot {}

fn read_count(ctx: &dyn Context) -> (u64, Option<u32>) {
    match ctx.get_shared_data(KEY) {
        (Some(v), cas) if v.len() == 8 => (u64::from_le_bytes(v.try_into().unwrap_or_default()), cas),
        (_, cas) => (0, cas),
    }
}

impl RootContext for TickerRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_else(|| b"{}".to_vec());
        let raw = if raw.is_empty() { b"{}".to_vec() } else { raw };
        match serde_json::from_slice::<Config>(&raw) {
            Ok(c) => {
                self.set_tick_period(Duration::from_millis(c.period_ms));
                self.register_shared_queue(QUEUE);
                match Metrics::define() {
                    Ok(m) => METRICS.with(|c| c.set(Some(m))),
                    Err(e) => warn!("ticker: cannot define metrics: {e:?}"),
                }
                true
            }
            Err(e) => {
                error!("ticker: invalid configuration: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let now = self.get_current_time();
        if let Some(m) = Metrics::get() {
            let _ = hostcalls::increment_metric(m.ticks, 1);
            if let Some(last) = LAST_TICK.with(Cell::get) {
                let ms = now.duration_since(last).unwrap_or_default().as_millis();
                let _ = hostcalls::record_metric(m.interval, ms.min(u64::MAX as u128) as u64);
            }
        }
        LAST_TICK.with(|t| t.set(Some(now)));
        // Several VMs tick concurrently: retry on CAS mismatch.
        for _ in 0..16 {
            let (n, cas) = read_count(self);
            match self.set_shared_data(KEY, Some(&(n + 1).to_le_bytes()), cas) {
                Ok(()) => break,
                Err(Status::CasMismatch) => continue,
                Err(e) => {
                    warn!("ticker: set_shared_data failed: {e:?}");
                    break;
                }
            }
        }
        let held = HELD.with(|h| std::mem::take(&mut *h.borrow_mut()));
        if let Some(m) = Metrics::get()
            && !held.is_empty()
        {
            let _ = hostcalls::increment_metric(m.held, -(held.len() as i64));
        }
        for ctx in held {
            // The request may be gone already: then the host refuses the context.
            if proxy_wasm::hostcalls::set_effective_context(ctx).is_ok() {
                let _ = proxy_wasm::hostcalls::resume_http_request();
            }
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        if WAIT.with(|w| w.borrow().0) == Some(queue_id) {
            let waiting = WAIT.with(|w| {
                let mut w = w.borrow_mut();
                while let Ok(Some(item)) = hostcalls::dequeue_shared_queue(queue_id) {
                    w.2 = Some(item);
                }
                std::mem::take(&mut w.1)
            });
            for ctx in waiting {
                if hostcalls::set_effective_context(ctx).is_ok() {
                    let _ = hostcalls::resume_http_request();
                }
            }
            return;
        }
        while let Ok(Some(item)) = self.dequeue_shared_queue(queue_id) {
            if let Err(e) = self.set_shared_data(LAST, Some(&item), None) {
                warn!("ticker: set_shared_data failed: {e:?}");
            }
        }
    }

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(TickerHttp { id, held: false, waited: false }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct TickerHttp {
    id: u32,
    held: bool,
    /// Paused by `x-wait` until an item arrived in `ticker.wait`.
    waited: bool,
}

impl Context for TickerHttp {}

impl TickerHttp {
    /// Enqueues `value` on this filter's shared queue `queue` (registered by some VM of it).
    fn enqueue(&self, queue: &str, value: &str) {
        let vm_id = self.get_property(vec!["plugin_vm_id"]).unwrap_or_default();
        match self.resolve_shared_queue(&String::from_utf8_lossy(&vm_id), queue) {
            Some(q) => {
                if let Err(e) = self.enqueue_shared_queue(q, Some(value.as_bytes())) {
                    warn!("ticker: enqueue failed: {e:?}");
                }
            }
            None => warn!("ticker: queue {queue} not found"),
        }
    }
}

impl HttpContext for TickerHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(value) = self.get_http_request_header("x-enqueue") {
            self.enqueue(QUEUE, &value);
        }
        if let Some(value) = self.get_http_request_header("x-signal") {
            self.enqueue(WAIT_QUEUE, &value);
        }
        if self.get_http_request_header("x-wait").is_some() {
            match hostcalls::register_shared_queue(WAIT_QUEUE) {
                Ok(q) => {
                    WAIT.with(|w| {
                        let mut w = w.borrow_mut();
                        w.0 = Some(q);
                        w.1.push(self.id);
                    });
                    self.waited = true;
                    return Action::Pause;
                }
                Err(e) => warn!("ticker: cannot register {WAIT_QUEUE}: {e:?}"),
            }
        }
        if self.get_http_request_header("x-hold").is_some() {
            HELD.with(|h| h.borrow_mut().push(self.id));
            if let Some(m) = Metrics::get() {
                let _ = hostcalls::increment_metric(m.held, 1);
            }
            self.held = true;
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let (n, _) = read_count(self);
        self.add_http_response_header("x-ticks", &n.to_string());
        if self.held {
            self.add_http_response_header("x-held", "released");
        }
        if self.waited
            && let Some(item) = WAIT.with(|w| w.borrow().2.clone())
        {
            self.add_http_response_header("x-signaled", &String::from_utf8_lossy(&item));
        }
        if let (Some(last), _) = self.get_shared_data(LAST) {
            self.add_http_response_header("x-last-dequeued", &String::from_utf8_lossy(&last));
        }
        Action::Continue
    }
}

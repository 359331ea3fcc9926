//! The journal of an initializer recorded for a snapshot (see [`super::snapshot`]): which host
//! calls it made and the arguments of those whose effects a snapshot VM must see again.

#![forbid(unsafe_code)]

use super::types::LogLevel;

/// Host calls whose effect a snapshot keeps by itself (their answers are in guest memory) or
/// that [`InitJournal`] records and [`restore`] replays.
const SNAPSHOT_SAFE: &[&str] = &[
    // Pure.
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_get_buffer_status",
    "proxy_get_buffer_bytes",
    "proxy_get_configuration",
    "proxy_get_header_map_value",
    "proxy_get_header_map_pairs",
    "proxy_get_header_map_size",
    "proxy_get_status",
    "proxy_get_shared_data",
    "proxy_resolve_shared_queue",
    "proxy_define_metric",
    "proxy_get_metric",
    "proxy_get_property",
    "proxy_set_effective_context",
    "environ_sizes_get",
    "environ_get",
    "args_sizes_get",
    "args_get",
    "clock_time_get",
    "random_get",
    // Replayed.
    "proxy_log",
    "fd_write",
    "proxy_set_tick_period_milliseconds",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_increment_metric",
    "proxy_record_metric",
];

/// What an initializer did through host calls that a snapshot VM must see done again.
#[derive(Debug, Default, Clone)]
pub struct InitJournal {
    /// Log lines, at any level (the level is checked again at replay).
    pub(crate) logs: Vec<(LogLevel, Vec<u8>)>,
    /// Shared-data writes without CAS: `(key, value)`.
    pub(crate) shared_sets: Vec<(Vec<u8>, Vec<u8>)>,
    /// Queue registrations: `(name, id)`.
    pub(crate) queues: Vec<(Vec<u8>, u32)>,
    /// Metric updates: `(id, value, increment)` (else a record).
    pub(crate) metric_updates: Vec<(u32, i64, bool)>,
    /// The first host call that cannot be replayed (the snapshot is refused).
    pub(crate) refused: Option<String>,
}

impl InitJournal {
    /// Notes host call `name`: one that is neither pure nor replayed refuses the snapshot.
    pub(crate) fn note(&mut self, name: &'static str) {
        if self.refused.is_none() && !SNAPSHOT_SAFE.contains(&name) {
            self.refused = Some(name.to_string());
        }
    }

    /// Refuses the snapshot because of `why` (a call whose arguments cannot be replayed).
    pub(crate) fn refuse(&mut self, why: &str) {
        if self.refused.is_none() {
            self.refused = Some(why.to_string());
        }
    }
}

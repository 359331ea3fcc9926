//! The checks shared by plugin arguments and YAML keys: each range, size and choice is written
//! once here, so `--pool-size=N` and `config.pool_size` (and the other pairs) accept exactly
//! the same values and name the same bounds in their errors.

#![forbid(unsafe_code)]

/// The default of `--pause-timeout-ms`: 20 s, below ATS's default
/// `proxy.config.http.transaction_no_activity_timeout_in` (30 s), which closes a paused
/// client connection without any response.
pub const DEFAULT_PAUSE_TIMEOUT_MS: u64 = 20_000;

/// The Prometheus endpoint's default port (on 127.0.0.1).
pub const DEFAULT_METRICS_PORT: u16 = 9464;

/// The Prometheus endpoint's default address, as written in `--metrics-listen`.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

/// The default of `config.max_body_bytes`: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

// Bounds of one filter file (`yaml.rs`).

/// The most values (scalars, lists, maps) one file may expand to, aliases expanded.
pub(super) const MAX_VALUES: usize = 100_000;

/// The most scalar text one file may expand to, aliases expanded (4 × [`MAX_FILE_BYTES`]).
pub(super) const MAX_TEXT_BYTES: usize = 4 << 20;

/// The largest filter file read (1 MiB); a larger one is an error.
pub(super) const MAX_FILE_BYTES: u64 = 1 << 20;

/// The most `*alias` events serde-saphyr replays in one file.
pub(super) const MAX_REPLAYED_EVENTS: usize = 10_000;

/// An inclusive range of whole numbers a setting may take.
pub(super) struct WholeNumber {
    min: u64,
    max: u64,
}

/// VMs per net thread per filter: `--pool-size` and `config.pool_size`.
pub(super) const POOL_SIZE: WholeNumber = WholeNumber { min: 1, max: 64 };

/// The longest one guest callback may run: `--callback-deadline-ms` and
/// `config.callback_deadline_ms`.
pub(super) const CALLBACK_DEADLINE_MS: WholeNumber = WholeNumber { min: 1, max: 60_000 };

/// The longest a filter may keep a message paused: `--pause-timeout-ms` and
/// `config.pause_timeout_ms` (both also take `off`); at most one hour.
pub(super) const PAUSE_TIMEOUT_MS: WholeNumber = WholeNumber { min: 1, max: 3_600_000 };

/// The longest a VM's initializer (`_initialize`, `proxy_on_vm_start`, `proxy_on_configure`)
/// may run: `--init-deadline-ms`.
pub(super) const INIT_DEADLINE_MS: WholeNumber = WholeNumber { min: 1, max: 60_000 };

/// The default of `--init-deadline-ms`.
pub const DEFAULT_INIT_DEADLINE_MS: u64 = 1000;

/// How many VMs may exist at once: `--max-vms`.
pub(super) const MAX_VMS: WholeNumber = WholeNumber { min: 1, max: 20_000 };

/// How many HTTP calls that come back into this ATS are filtered again: `--call-depth`.
pub(super) const CALL_DEPTH: WholeNumber = WholeNumber { min: 1, max: 8 };

/// HTTP calls in flight at once per VM (`--max-calls-per-vm`) and per transaction
/// (`--max-calls-per-txn`).
pub(super) const CALLS_IN_FLIGHT: WholeNumber = WholeNumber { min: 1, max: 100_000 };

impl WholeNumber {
    /// The largest value allowed.
    pub(super) fn max(&self) -> u64 {
        self.max
    }

    /// Whether `n` is in the range.
    pub(super) fn contains(&self, n: i64) -> bool {
        u64::try_from(n).is_ok_and(|n| (self.min..=self.max).contains(&n))
    }

    /// Parses argument text: `"{flag}: expected a whole number from MIN to MAX, got \"TEXT\""`
    /// unless it is a decimal number in the range.
    pub(super) fn parse(&self, flag: &str, text: &str) -> Result<u64, String> {
        match text.parse::<u64>() {
            Ok(n) if (self.min..=self.max).contains(&n) => Ok(n),
            _ => Err(format!("{flag}: expected a whole number from {} to {}, got \"{text}\"", self.min, self.max)),
        }
    }

    /// Checks a YAML integer: `"{key}: expected a whole number from MIN to MAX, got N"` unless
    /// it is in the range.
    pub(super) fn check(&self, key: &str, n: i64) -> Result<u64, String> {
        match u64::try_from(n) {
            Ok(n) if (self.min..=self.max).contains(&n) => Ok(n),
            _ => Err(format!("{key}: expected a whole number from {} to {}, got {n}", self.min, self.max)),
        }
    }
}

/// Parses `--max-memory`: a size (see [`parse_size`]) from 1M to 4G.
pub(super) fn max_memory(flag: &str, text: &str) -> Result<usize, String> {
    match parse_size(text) {
        Some(n) if (1 << 20..=4 << 30).contains(&n) => Ok(n),
        _ => Err(format!("{flag}: expected a size from 1M to 4G (e.g. 64M), got \"{text}\"")),
    }
}

/// Parses `--max-shared-data`: a size from 64K to 64G.
pub(super) fn max_shared_data(flag: &str, text: &str) -> Result<usize, String> {
    match parse_size(text) {
        Some(n) if (64 << 10..=64 << 30).contains(&n) => Ok(n),
        _ => Err(format!("{flag}: expected a size from 64K to 64G (e.g. 64M), got \"{text}\"")),
    }
}

/// Parses `--max-shared-value`: a size from 1K to 1G.
pub(super) fn max_shared_value(flag: &str, text: &str) -> Result<usize, String> {
    match parse_size(text) {
        Some(n) if (1 << 10..=1 << 30).contains(&n) => Ok(n),
        _ => Err(format!("{flag}: expected a size from 1K to 1G (e.g. 1M), got \"{text}\"")),
    }
}

/// Parses a size such as `65536`, `512K`, `64M`, `64MiB` or `1G` (powers of 1024).
///
/// Ours rather than a size crate's: `bytesize` and `parse-size` also take fractions (`1.5G`),
/// spaces and more units, and read `K`/`KB` as 1000, so they would accept values this
/// format has always rejected and change what `512KB` means.
pub fn parse_size(v: &str) -> Option<usize> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult: usize = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// How transactions share VMs (`--isolation` and `config.isolation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// Each net thread keeps long-lived VMs; a transaction gets a stream context in one of them.
    Shared,
    /// Each transaction gets a fresh VM of its own, discarded afterwards.
    Transaction,
}

impl Isolation {
    /// Parses `shared` or `transaction`; any other text is an error naming `key`.
    pub(super) fn parse(key: &str, v: &str) -> Result<Self, String> {
        match v {
            "shared" => Ok(Isolation::Shared),
            "transaction" => Ok(Isolation::Transaction),
            _ => Err(format!("{key}: expected \"shared\" or \"transaction\", got \"{v}\"")),
        }
    }
}

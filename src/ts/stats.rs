//! ATS's own statistics (`TSStatCreate`): integer stats readable with `traffic_ctl metric` or
//! `stats_over_http`.

use std::ffi::CString;

use super::sys;

/// One integer stat (`TS_RECORDDATATYPE_INT`, not persistent, `TS_STAT_SYNC_SUM`: its value is
/// the sum of every increment plus what [`Stat::set`] stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat(std::ffi::c_int);

impl Stat {
    /// Creates the stat `name`, or finds it when it exists already (e.g. two filters of one
    /// name). `None` when the name is not a C string or ATS refuses it. Call from
    /// `TSPluginInit`.
    pub fn create(name: &str) -> Option<Stat> {
        let c = CString::new(name).ok()?;
        let mut id: std::ffi::c_int = -1;
        // SAFETY: c is NUL-terminated and outlives the call; id is a valid out-param.
        if unsafe { sys::TSStatFindName(c.as_ptr(), &mut id) } == sys::TS_SUCCESS && id >= 0 {
            return Some(Stat(id));
        }
        // SAFETY: as above; ATS copies the name.
        let id = unsafe {
            sys::TSStatCreate(
                c.as_ptr(),
                sys::TS_RECORDDATATYPE_INT,
                sys::TS_STAT_NON_PERSISTENT,
                sys::TS_STAT_SYNC_SUM as _,
            )
        };
        (id >= 0).then_some(Stat(id))
    }

    /// Adds `n`. Only on ATS threads (event or task threads: the increment goes to the calling
    /// thread's block of raw stats).
    pub fn increment(self, n: i64) {
        // SAFETY: the id came from TSStatCreate/TSStatFindName.
        unsafe { sys::TSStatIntIncrement(self.0, n) }
    }

    /// Sets the stat's global value (any thread: a plain store into the global block).
    pub fn set(self, value: i64) {
        // SAFETY: the id came from TSStatCreate/TSStatFindName.
        unsafe { sys::TSStatIntSet(self.0, value) }
    }
}

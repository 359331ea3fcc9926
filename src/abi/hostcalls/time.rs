//! Spec sections "Clocks" and "Timers": `proxy_get_current_time_nanoseconds`,
//! `proxy_set_tick_period_milliseconds` (WASI `clock_time_get` is in [`super::wasi`]).

#![forbid(unsafe_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::abi::backend::Backend;
use crate::abi::memory::write_u64;

use super::caller::{Ctx, HostCallResult, memory};

/// `proxy_get_current_time_nanoseconds(return_time)`: wall-clock time since the Unix epoch.
#[inline]
pub(super) fn proxy_get_current_time_nanoseconds<B: Backend>(c: &mut Ctx<'_, B>, ret: i32) -> HostCallResult {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let memory = memory(c)?;
    write_u64(memory.data_mut(&mut *c), ret, now)?;
    Ok(())
}

/// `proxy_set_tick_period_milliseconds(period)`: asks the backend to call `proxy_on_tick` every
/// `period` ms (0 stops the timer).
#[inline]
pub(super) fn proxy_set_tick_period_milliseconds<B: Backend>(c: &mut Ctx<'_, B>, period: i32) -> HostCallResult {
    let period = match period as u32 {
        0 => None,
        ms => Some(Duration::from_millis(ms as u64)),
    };
    let st = c.data_mut();
    st.backend.set_tick_period(period)?;
    st.tick_period = period;
    Ok(())
}

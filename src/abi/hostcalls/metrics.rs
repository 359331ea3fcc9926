//! Spec section "Metrics": `proxy_define_metric`, `proxy_increment_metric`,
//! `proxy_record_metric`, `proxy_get_metric`, over the process-wide registry of the guests'
//! metrics ([`crate::abi::guest_metrics`], where each type's semantics are).

#![forbid(unsafe_code)]

use crate::abi::backend::Backend;
use crate::abi::memory::{slice, write_u32, write_u64};
use crate::abi::types::{MetricType, Status};

use super::caller::{Ctx, HostCallResult, check_ret, memory};

/// `proxy_define_metric(metric_type, metric_name_data, metric_name_size, return_metric_id)`:
/// the id of the metric of that name (the same id when defined again with the same type).
#[inline]
pub(super) fn proxy_define_metric<B: Backend>(
    c: &mut Ctx<'_, B>,
    kind: i32,
    np: i32,
    nl: i32,
    ret: i32,
) -> HostCallResult {
    let kind = MetricType::from_raw(kind).ok_or(Status::BadArgument)?;
    check_ret(c, ret)?;
    let memory = memory(c)?;
    let (mem, st) = memory.data_and_store_mut(&mut *c);
    let id = st.metrics.define(kind, slice(mem, np, nl)?)?;
    write_u32(mem, ret, id)?;
    Ok(())
}

/// `proxy_increment_metric(metric_id, offset)`: adds `offset`.
#[inline]
pub(super) fn proxy_increment_metric<B: Backend>(c: &mut Ctx<'_, B>, id: i32, delta: i64) -> HostCallResult {
    c.data().metrics.increment(id as u32, delta)?;
    if let Some(j) = c.data_mut().journal.as_mut() {
        j.metric_updates.push((id as u32, delta, true));
    }
    Ok(())
}

/// `proxy_record_metric(metric_id, value)`: sets the value (a histogram: adds an observation).
#[inline]
pub(super) fn proxy_record_metric<B: Backend>(c: &mut Ctx<'_, B>, id: i32, value: i64) -> HostCallResult {
    c.data().metrics.record(id as u32, value as u64)?;
    if let Some(j) = c.data_mut().journal.as_mut() {
        j.metric_updates.push((id as u32, value, false));
    }
    Ok(())
}

/// `proxy_get_metric(metric_id, return_value)`: the current value.
#[inline]
pub(super) fn proxy_get_metric<B: Backend>(c: &mut Ctx<'_, B>, id: i32, ret: i32) -> HostCallResult {
    check_ret(c, ret)?;
    let value = c.data().metrics.get(id as u32)?;
    let memory = memory(c)?;
    write_u64(memory.data_mut(&mut *c), ret, value)?;
    Ok(())
}

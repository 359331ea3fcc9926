//! The ABI's host functions declared directly, so the probe sees every status (the SDK's
//! wrappers panic on statuses they do not expect).

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    pub fn proxy_log(level: u32, p: *const u8, n: usize) -> u32;
    pub fn proxy_get_log_level(ret: *mut u32) -> u32;
    pub fn proxy_get_current_time_nanoseconds(ret: *mut u64) -> u32;
    pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    pub fn proxy_get_buffer_bytes(t: u32, start: usize, max: usize, rp: *mut *mut u8, rl: *mut usize) -> u32;
    pub fn proxy_get_buffer_status(t: u32, rs: *mut usize, rf: *mut u32) -> u32;
    pub fn proxy_set_buffer_bytes(t: u32, start: usize, size: usize, p: *const u8, n: usize) -> u32;
    pub fn proxy_get_header_map_pairs(m: u32, rp: *mut *mut u8, rl: *mut usize) -> u32;
    pub fn proxy_get_header_map_size(m: u32, rs: *mut usize) -> u32;
    pub fn proxy_set_header_map_pairs(m: u32, p: *const u8, n: usize) -> u32;
    pub fn proxy_get_header_map_value(m: u32, kp: *const u8, kl: usize, rp: *mut *mut u8, rl: *mut usize) -> u32;
    pub fn proxy_add_header_map_value(m: u32, kp: *const u8, kl: usize, vp: *const u8, vl: usize) -> u32;
    pub fn proxy_replace_header_map_value(m: u32, kp: *const u8, kl: usize, vp: *const u8, vl: usize) -> u32;
    pub fn proxy_remove_header_map_value(m: u32, kp: *const u8, kl: usize) -> u32;
    pub fn proxy_continue_stream(t: u32) -> u32;
    pub fn proxy_close_stream(t: u32) -> u32;
    pub fn proxy_continue_request() -> u32;
    pub fn proxy_continue_response() -> u32;
    pub fn proxy_clear_route_cache() -> u32;
    pub fn proxy_get_configuration(rp: *mut *mut u8, rl: *mut usize) -> u32;
    pub fn proxy_send_local_response(
        code: u32,
        dp: *const u8,
        dl: usize,
        bp: *const u8,
        bl: usize,
        hp: *const u8,
        hl: usize,
        grpc: i32,
    ) -> u32;
    pub fn proxy_get_status(code: *mut u32, rp: *mut *mut u8, rl: *mut usize) -> u32;
    pub fn proxy_http_call(
        up: *const u8,
        ul: usize,
        hp: *const u8,
        hl: usize,
        bp: *const u8,
        bl: usize,
        tp: *const u8,
        tl: usize,
        timeout: u32,
        ret: *mut u32,
    ) -> u32;
    pub fn proxy_grpc_call(
        up: *const u8,
        ul: usize,
        sp: *const u8,
        sl: usize,
        mp: *const u8,
        ml: usize,
        ip: *const u8,
        il: usize,
        msgp: *const u8,
        msgl: usize,
        timeout: u32,
        ret: *mut u32,
    ) -> u32;
    pub fn proxy_grpc_stream(
        up: *const u8,
        ul: usize,
        sp: *const u8,
        sl: usize,
        mp: *const u8,
        ml: usize,
        ip: *const u8,
        il: usize,
        ret: *mut u32,
    ) -> u32;
    pub fn proxy_grpc_send(id: u32, p: *const u8, n: usize, end: u32) -> u32;
    pub fn proxy_grpc_cancel(id: u32) -> u32;
    pub fn proxy_grpc_close(id: u32) -> u32;
    pub fn proxy_get_shared_data(kp: *const u8, kl: usize, rp: *mut *mut u8, rl: *mut usize, cas: *mut u32) -> u32;
    pub fn proxy_set_shared_data(kp: *const u8, kl: usize, vp: *const u8, vl: usize, cas: u32) -> u32;
    pub fn proxy_register_shared_queue(np: *const u8, nl: usize, ret: *mut u32) -> u32;
    pub fn proxy_resolve_shared_queue(vp: *const u8, vl: usize, np: *const u8, nl: usize, ret: *mut u32) -> u32;
    pub fn proxy_enqueue_shared_queue(id: u32, p: *const u8, n: usize) -> u32;
    pub fn proxy_dequeue_shared_queue(id: u32, rp: *mut *mut u8, rl: *mut usize) -> u32;
    pub fn proxy_define_metric(t: u32, np: *const u8, nl: usize, ret: *mut u32) -> u32;
    pub fn proxy_increment_metric(id: u32, delta: i64) -> u32;
    pub fn proxy_record_metric(id: u32, value: u64) -> u32;
    pub fn proxy_get_metric(id: u32, ret: *mut u64) -> u32;
    pub fn proxy_get_property(pp: *const u8, pl: usize, rp: *mut *mut u8, rl: *mut usize) -> u32;
    pub fn proxy_set_property(pp: *const u8, pl: usize, vp: *const u8, vl: usize) -> u32;
    pub fn proxy_set_effective_context(id: u32) -> u32;
    pub fn proxy_done() -> u32;
    pub fn proxy_call_foreign_function(
        np: *const u8,
        nl: usize,
        ap: *const u8,
        al: usize,
        rp: *mut *mut u8,
        rl: *mut usize,
    ) -> u32;
}

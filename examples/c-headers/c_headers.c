/*
 * c-headers: a Proxy-Wasm HTTP filter in plain C against ABI 0.2.1 (no SDK), a test fixture
 * for ats-wasm. Reads the plugin_root_id property the way the C++ SDK does (path with a
 * trailing NUL), then adds `x-c-filter: <root id>` to requests and `x-c-response: <status>`
 * to responses. Built by examples/build.sh with clang-22 for wasm32-wasi (reactor).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define IMPORT(name) __attribute__((import_module("env"), import_name(#name)))
#define EXPORT(name) __attribute__((export_name(#name)))

IMPORT(proxy_log) int32_t proxy_log(int32_t level, const char *msg, size_t len);
IMPORT(proxy_get_property) int32_t proxy_get_property(const char *path, size_t len, char **ret, size_t *ret_len);
IMPORT(proxy_get_header_map_value)
int32_t proxy_get_header_map_value(int32_t map, const char *key, size_t key_len, char **ret, size_t *ret_len);
IMPORT(proxy_add_header_map_value)
int32_t proxy_add_header_map_value(int32_t map, const char *key, size_t key_len, const char *value, size_t value_len);

enum { REQUEST_HEADERS = 0, RESPONSE_HEADERS = 2, INFO = 2 };

static char *root_id;
static size_t root_id_len;

EXPORT(proxy_abi_version_0_2_1) void proxy_abi_version_0_2_1(void) {}

EXPORT(proxy_on_memory_allocate) void *proxy_on_memory_allocate(size_t size) { return malloc(size); }

EXPORT(proxy_on_context_create) void proxy_on_context_create(uint32_t id, uint32_t parent) {
    if (parent == 0) {
        static const char path[] = "plugin_root_id"; /* sizeof includes the trailing NUL */
        if (proxy_get_property(path, sizeof path, &root_id, &root_id_len) != 0) {
            root_id = NULL;
            root_id_len = 0;
        }
    }
}

EXPORT(proxy_on_vm_start) int32_t proxy_on_vm_start(uint32_t id, size_t size) { return 1; }

EXPORT(proxy_on_configure) int32_t proxy_on_configure(uint32_t id, size_t size) {
    static const char msg[] = "c-headers configured";
    proxy_log(INFO, msg, sizeof msg - 1);
    return 1;
}

EXPORT(proxy_on_request_headers) int32_t proxy_on_request_headers(uint32_t id, size_t n, int32_t eos) {
    static const char key[] = "x-c-filter";
    proxy_add_header_map_value(REQUEST_HEADERS, key, sizeof key - 1, root_id ? root_id : "", root_id_len);
    return 0;
}

EXPORT(proxy_on_response_headers) int32_t proxy_on_response_headers(uint32_t id, size_t n, int32_t eos) {
    static const char status[] = ":status", key[] = "x-c-response";
    char *value = NULL;
    size_t len = 0;
    if (proxy_get_header_map_value(RESPONSE_HEADERS, status, sizeof status - 1, &value, &len) != 0) {
        value = NULL;
        len = 0;
    }
    proxy_add_header_map_value(RESPONSE_HEADERS, key, sizeof key - 1, value ? value : "none", value ? len : 4);
    free(value);
    return 0;
}

EXPORT(proxy_on_done) int32_t proxy_on_done(uint32_t id) { return 1; }

/* The ATS C API that bindgen turns into src/ts/sys.rs's bindings (see build.rs). */
#include <ts/ts.h>
#include <ts/remap.h>
#include <ts/experimental.h>

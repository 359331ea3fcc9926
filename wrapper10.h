/* The ATS 10 C++ API that bindgen turns into src/ts/sys.rs's bindings (see build.rs);
   ATS 10 folded ts/experimental.h into ts/ts.h. */
#include <ts/ts.h>
#include <ts/remap.h>

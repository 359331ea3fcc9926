// ATS 10 only (see build.rs): ATS 10.0 removed TSDebug and TSIsDebugTagSet in favour of the
// C++ debug-control class DbgCtl (tsutil/DbgCtl.h), whose test is inline and so cannot be
// bound by bindgen. These two extern "C" functions are all src/ts/log.rs needs from it.

#include <ts/ts.h>

namespace
{
// The one debug-control object for the tag "ats_wasm", made on first use and never destroyed
// (ATS may still log while the process exits; a static's destructor could run first).
const DbgCtl &
ctl()
{
  static const DbgCtl *c = new DbgCtl{"ats_wasm"};
  return *c;
}
} // namespace

// Whether debug output for the "ats_wasm" tag is enabled (the former TSIsDebugTagSet).
extern "C" int
ats_wasm_dbg_on()
{
  return ctl().on() ? 1 : 0;
}

// Writes len bytes of msg under the "ats_wasm" tag if enabled (the former TSDebug).
extern "C" void
ats_wasm_dbg(const char *msg, int len)
{
  Dbg(ctl(), "%.*s", len, msg);
}

// as-headers: an AssemblyScript Proxy-Wasm filter (@solo-io/proxy-runtime 0.1.8, ABI 0.2.0),
// a test fixture for ats-wasm. Adds `x-as-filter: <plugin configuration>` to requests and
// `x-as-response: <:status of the response>` to responses.
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext,
  Context,
  registerRootContext,
  FilterHeadersStatusValues,
  stream_context,
} from "@solo-io/proxy-runtime";

class AsHeadersRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new AsHeaders(context_id, this);
  }
}

class AsHeaders extends Context {
  constructor(context_id: u32, root_context: AsHeadersRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.request.add("x-as-filter", this.root_context.getConfiguration());
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const status = stream_context.headers.response.get(":status");
    stream_context.headers.response.add("x-as-response", status);
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => {
  return new AsHeadersRoot(context_id);
}, "as_headers");

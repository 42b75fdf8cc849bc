// The generated messages, enums and service descriptors of remotegpu.v1, re-exported so callers need
// no second import. The root gen/ (protoc-gen-es output of proto/) is the only source: the SDK build
// compiles it into the package, nothing here is copied or edited by hand.

export * from "../../gen/remotegpu/v1/common_pb.js";
export * from "../../gen/remotegpu/v1/telemetry_pb.js";
export * from "../../gen/remotegpu/v1/agent_pb.js";
export * from "../../gen/remotegpu/v1/gpu_pb.js";
export * from "../../gen/remotegpu/v1/host_pb.js";
export * from "../../gen/remotegpu/v1/workspace_pb.js";
export * from "../../gen/remotegpu/v1/environment_pb.js";

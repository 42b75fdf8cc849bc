// gRPC server reflection (grpc.reflection.v1 and v1alpha) for a Connect router.
// connect-node ships none, and tools such as buf curl, grpcurl and grpcui need
// it to discover services without a local copy of the protos.
import { create, createRegistry, fromBinary, toBinary, type DescFile } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { ConnectRouter } from "@connectrpc/connect";
import * as v1 from "../../gen/grpc/reflection/v1/reflection_pb.js";
import * as v1alpha from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { file_health_v1_health } from "../../gen/health/v1/health_pb.js";

// Status codes the spec asks for inside error_response (grpc::StatusCode).
const INVALID_ARGUMENT = 3;
const NOT_FOUND = 5;

interface Index {
  files: Map<string, DescFile>; // by proto file name, e.g. "remotegpu/v1/host.proto"
  symbols: Map<string, DescFile>; // fully-qualified symbol -> declaring file
  services: string[];
  registry: ReturnType<typeof createRegistry>;
  encoded: Map<DescFile, Uint8Array>; // serialized FileDescriptorProto, built lazily
}

function buildIndex(roots: readonly DescFile[]): Index {
  const files = new Map<string, DescFile>();
  const visit = (file: DescFile): void => {
    if (files.has(file.proto.name)) return;
    files.set(file.proto.name, file);
    file.dependencies.forEach(visit);
  };
  [...roots, file_health_v1_health, v1.file_grpc_reflection_v1_reflection, v1alpha.file_grpc_reflection_v1alpha_reflection].forEach(visit);

  // The registry knows types (nested ones too); members that clients may also
  // ask about (methods, fields, enum values) are added to the symbol map by hand.
  const registry = createRegistry(...files.values());
  const symbols = new Map<string, DescFile>();
  const services: string[] = [];
  for (const desc of registry) {
    symbols.set(desc.typeName, desc.file);
    if (desc.kind === "service") {
      services.push(desc.typeName);
      for (const m of desc.methods) symbols.set(`${desc.typeName}.${m.name}`, desc.file);
    } else if (desc.kind === "message") {
      for (const f of desc.fields) symbols.set(`${desc.typeName}.${f.name}`, desc.file);
    } else if (desc.kind === "enum") {
      // Enum values are scoped as siblings of their enum, as in C++.
      const scope = desc.typeName.slice(0, desc.typeName.lastIndexOf(".") + 1);
      for (const v of desc.values) symbols.set(scope + v.name, desc.file);
    }
  }
  return { files, symbols, services: services.sort(), registry, encoded: new Map() };
}

// The requested file first, then its transitive imports (as grpc-go does), so
// one answer is enough for the client to build the whole schema.
function fileResponse(index: Index, file: DescFile): v1.ServerReflectionResponse["messageResponse"] {
  const seen = new Set<DescFile>();
  const walk = (f: DescFile): void => {
    if (seen.has(f)) return;
    seen.add(f);
    f.dependencies.forEach(walk);
  };
  walk(file);
  const fileDescriptorProto = [...seen].map((f) => {
    let bytes = index.encoded.get(f);
    if (!bytes) {
      bytes = toBinary(FileDescriptorProtoSchema, f.proto);
      index.encoded.set(f, bytes);
    }
    return bytes;
  });
  return { case: "fileDescriptorResponse", value: create(v1.FileDescriptorResponseSchema, { fileDescriptorProto }) };
}

function errorResponse(errorCode: number, errorMessage: string): v1.ServerReflectionResponse["messageResponse"] {
  return { case: "errorResponse", value: create(v1.ErrorResponseSchema, { errorCode, errorMessage }) };
}

function answer(index: Index, req: v1.ServerReflectionRequest): v1.ServerReflectionResponse {
  const r = req.messageRequest;
  let messageResponse: v1.ServerReflectionResponse["messageResponse"];
  switch (r.case) {
    case "listServices":
      messageResponse = {
        case: "listServicesResponse",
        value: create(v1.ListServiceResponseSchema, { service: index.services.map((name) => ({ name })) }),
      };
      break;
    case "fileByFilename": {
      const file = index.files.get(r.value);
      messageResponse = file ? fileResponse(index, file) : errorResponse(NOT_FOUND, `file not found: ${r.value}`);
      break;
    }
    case "fileContainingSymbol": {
      const file = index.symbols.get(r.value);
      messageResponse = file ? fileResponse(index, file) : errorResponse(NOT_FOUND, `symbol not found: ${r.value}`);
      break;
    }
    case "fileContainingExtension": {
      const { containingType, extensionNumber } = r.value;
      const message = index.registry.getMessage(containingType);
      const ext = message && index.registry.getExtensionFor(message, extensionNumber);
      messageResponse = ext
        ? fileResponse(index, ext.file)
        : errorResponse(NOT_FOUND, `extension not found: ${containingType}(${extensionNumber})`);
      break;
    }
    case "allExtensionNumbersOfType": {
      if (!index.registry.getMessage(r.value)) {
        messageResponse = errorResponse(NOT_FOUND, `type not found: ${r.value}`);
        break;
      }
      const extensionNumber: number[] = [];
      for (const d of index.registry) {
        if (d.kind === "extension" && d.extendee.typeName === r.value) extensionNumber.push(d.number);
      }
      messageResponse = {
        case: "allExtensionNumbersResponse",
        value: create(v1.ExtensionNumberResponseSchema, { baseTypeName: r.value, extensionNumber }),
      };
      break;
    }
    default:
      // No field set, or one from a newer revision of the protocol.
      messageResponse = errorResponse(INVALID_ARGUMENT, "unsupported message_request");
  }
  return create(v1.ServerReflectionResponseSchema, { validHost: req.host, originalRequest: req, messageResponse });
}

/**
 * Registers grpc.reflection.v1.ServerReflection and its predecessor
 * grpc.reflection.v1alpha.ServerReflection, exposing `files`, everything they
 * import, and the health and reflection protos.
 */
export function registerReflection(router: ConnectRouter, files: readonly DescFile[]): void {
  const index = buildIndex(files);
  router.service(v1.ServerReflection, {
    async *serverReflectionInfo(requests) {
      for await (const req of requests) yield answer(index, req);
    },
  });
  // v1alpha has the same field numbers as v1, so a round trip through the
  // wire format converts between them without duplicating the logic.
  router.service(v1alpha.ServerReflection, {
    async *serverReflectionInfo(requests) {
      for await (const req of requests) {
        const asV1 = fromBinary(v1.ServerReflectionRequestSchema, toBinary(v1alpha.ServerReflectionRequestSchema, req));
        const res = answer(index, asV1);
        yield fromBinary(v1alpha.ServerReflectionResponseSchema, toBinary(v1.ServerReflectionResponseSchema, res));
      }
    },
  });
}

/** One message framed as gRPC and Connect streams send it: a flags byte (0), its length, its bytes. */
export function envelope(bytes: Uint8Array): Buffer {
  const out = Buffer.alloc(5 + bytes.length);
  out.writeUInt32BE(bytes.length, 1);
  out.set(bytes, 5);
  return out;
}

/** The headers of a gRPC call over raw HTTP/2 to `path` ("/package.Service/Method"), as `token`. */
export function grpcHeaders(path: string, token: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    ":method": "POST",
    ":path": path,
    "content-type": "application/grpc",
    te: "trailers",
    authorization: `Bearer ${token}`,
    ...extra,
  };
}

/**
 * How we reach a gRPC peer and what a channel allows, the same for the
 * daemon's server and every client (containerd's APIs, its CRI, our own
 * daemon).
 */
import type * as grpc from "@grpc/grpc-js";

/**
 * Message size limit, both ways. containerd accepts messages up to 16 MiB;
 * a manifest with a huge closure in its annotations, or a Mounts response
 * for a thousand store paths, can come close.
 */
const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

/** A unix socket path (or a grpc-js target such as "unix:/run/x.sock", "dns:host:port") as a grpc-js target. */
export function grpcTarget(address: string): string {
  return address.includes(":") && !address.startsWith("/") ? address : `unix:${address}`;
}

export interface ChannelOptions {
  /** A connection of its own (grpc-js otherwise shares one per target within a process). */
  ownConnection?: boolean;
}

/** A client channel's options. */
export function channelOptions(o: ChannelOptions = {}): grpc.ChannelOptions {
  return {
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    // Reconnect quickly once the peer is back (grpc-js backs off itself).
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 5000,
    ...(o.ownConnection ? { "grpc.use_local_subchannel_pool": 1 } : {}),
  };
}

/** The server's options. */
export const SERVER_OPTIONS: grpc.ChannelOptions = {
  "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
  "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
  // Channelz (grpc-js's per-call counters and traces for a debugging
  // service we do not serve) cost about 4% of the daemon's CPU per call
  // in bench/snapshotter's profile.
  "grpc.enable_channelz": 0,
};

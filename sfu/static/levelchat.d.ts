// TypeScript declarations of the LevelChat browser SDK (levelchat.js); docs/sdk.md describes it.

/** Catalogue codes the SDK raises itself (shared/error-reference.txt). */
export type SdkErrorCode =
  | "config/invalid"
  | "config/missing-api-key"
  | "network/rate-limited"
  | "media/permission-denied"
  | "media/device-not-found"
  | "media/unsupported"
  | "media/constraint-not-satisfied"
  | "signaling/connect-failed"
  | "signaling/closed"
  | "signaling/timeout"
  | "signaling/protocol"
  | "signaling/rpc-error"
  | "signaling/rpc-timeout"
  | "transport/ice-failed"
  | "transport/dtls-failed"
  | "transport/unsupported"
  | "codec/unsupported"
  | "recording/not-permitted"
  | "recording/backend-failed"
  | "data/not-open"
  | "data/open-timeout"
  | "data/open-failed";

/** An RFC 7807 problem as the node sends it (inside a JSON-RPC error's `data`). */
export interface Problem {
  type: string;
  title: string;
  status: number | null;
  detail: string;
  code: string;
  request_id?: string;
  instance?: string;
  [key: string]: unknown;
}

export class LevelChatError extends Error {
  /** a catalogue code: an SdkErrorCode, or the node's own (token/expired, room/cap-denied, ...) */
  readonly code: SdkErrorCode | string;
  /** whether trying again later can succeed (the SDK already did for the codes it recovers from) */
  readonly retryable: boolean;
  /** the catalogue entry's HTTP status; null for an SDK-only code */
  readonly status: number | null;
  readonly detail: string;
  readonly problem: Problem | null;
  /** signaling/rpc-error: the node's refusal, with its own code (e.g. "not_found") */
  readonly inner: LevelChatError | null;
  /** network/rate-limited: the wait the node asked for (Retry-After, with jitter) */
  readonly retryAfterMs: number | null;
  /** config/invalid: the option at fault */
  readonly field: string | null;
  /** recording/backend-failed from the node's `recording` notification: the recording's id */
  readonly recording?: string | null;
  constructor(code: string, detail: string, extra?: {
    problem?: Problem | null; inner?: LevelChatError | null; status?: number | null; retryable?: boolean;
    retryAfterMs?: number | null; field?: string | null; cause?: unknown;
  });
  toJSON(): {
    code: string; retryable: boolean; status: number | null; detail: string; inner: object | null;
    field: string | null; retryAfterMs: number | null;
  };
}

export type TokenProvider = () => string | Promise<string>;

export interface ClientOptions {
  /** the node's base URL: http(s):// or ws(s):// */
  url: string;
  /** a join token (room:join, plus room:publish / room:subscribe as needed) */
  token?: string;
  /** called for the first token when `token` is absent, and again whenever the node says token/expired */
  tokenProvider?: TokenProvider;
  /** the participant's display name */
  name?: string;
  /** open the two data channels at join (default true) */
  data?: boolean;
  /** "relay": media through TURN only (default "all") */
  iceTransportPolicy?: "all" | "relay";
  /** instead of the TURN servers the node hands out at join */
  iceServers?: RTCIceServer[];
  /** a request unanswered this long fails with signaling/rpc-timeout (default 10000) */
  rpcTimeoutMs?: number;
  /** tries again of an idempotent request after a timeout, of any after a 429 (default 2) */
  rpcRetries?: number;
  /** a ping this often; unanswered: signaling/timeout and a new socket (default 10000, 0: none) */
  heartbeatMs?: number;
  /** reconnect a lost signaling socket and resume the session (default true) */
  reconnect?: boolean;
  /** socket attempts before giving up, at connect() and per reconnection (default 10) */
  maxReconnectAttempts?: number;
  /** the first backoff (default 250 ms), doubled each attempt up to backoffMaxMs (default 8000), jittered to [d/2, d] */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** a media transport not connected this long after a negotiation counts as failed (default 15000, 0: only "failed") */
  iceTimeoutMs?: number;
  /** ICE restarts of a failed transport before the TURN relay fallback (default 1) */
  iceRestarts?: number;
  /** fresh joins with new transports after a DTLS failure before giving up on it (default 1, 0 to 10) */
  dtlsRetries?: number;
}

export type RoomState = "connecting" | "connected" | "reconnecting" | "disconnected";

export interface TrackInfo {
  sid: string;
  kind: "audio" | "video";
  codec: string;
  mid: string;
  muted: boolean;
  layers?: string[];
}

export interface ParticipantInfo {
  identity: string;
  sid: string;
  name: string | null;
  metadata: string | null;
  kind: string;
  tracks: TrackInfo[];
}

/** ``updateSubscription``'s options: null lifts a bound, a key left out keeps its value */
export interface SubscriptionOptions {
  /** false pauses the track (nothing is sent for it), true resumes it (from a keyframe) */
  enabled?: boolean;
  /** the highest simulcast layer (a rid of the track's layers, "auto" or null: no bound) */
  maxLayer?: string | null;
  /** the highest simulcast layer whose picture (from its keyframes) fits */
  maxWidth?: number | null;
  maxHeight?: number | null;
  /** kept with the subscription for the node's temporal layer choice */
  maxFps?: number | null;
}

export interface SubscriptionState {
  track: string;
  enabled: boolean;
  max_layer: string | null;
  max_width: number | null;
  max_height: number | null;
  max_fps: number | null;
  /** a simulcast track's layers, low to high, and what it receives */
  layers?: { rid: string; active: boolean; width: number | null; height: number | null }[];
  current?: string | null;
  switching_to?: string | null;
}

export interface RemoteTrack {
  participant: string;
  kind: "audio" | "video";
  trackSid: string;
  stream: MediaStream;
  track: MediaStreamTrack;
  mid: string;
  /** room.updateSubscription(trackSid, options) */
  updateSubscription(options: SubscriptionOptions): Promise<SubscriptionState>;
  /** updateSubscription({enabled: false}) */
  pause(): Promise<SubscriptionState>;
  /** updateSubscription({enabled: true}) */
  resume(): Promise<SubscriptionState>;
}

export interface RoomEvents {
  state: { state: RoomState; previous: RoomState };
  reconnecting: { attempt: number; error: LevelChatError };
  reconnected: { resumed: boolean };
  transport_recovery: { transport: "publisher" | "subscriber"; action: "ice-restart" | "relay" | "rejoin"; reason: "failed" | "timeout" | "dtls" };
  data: { from: string; data: string | Uint8Array; reliable: boolean };
  participant_joined: { participant: ParticipantInfo };
  participant_left: { participant: string; sid: string; reason: string };
  participant_updated: { participant: ParticipantInfo & { permissions: Record<string, boolean> } };
  track: RemoteTrack;
  track_removed: { participant: string; trackSid: string; mid: string };
  track_published: { participant: string; track: TrackInfo };
  track_unpublished: { participant: string; track: string };
  track_muted: { participant: string; track: string; muted: boolean; by?: "server" };
  active_speakers: { speakers: { participant: string; track: string; level: number }[] };
  /** after joining: everyone's rating; then, at most once a second, the ratings that changed */
  connection_quality: { participants: { identity: string; quality: ConnectionQuality }[] };
  disconnected: { reason: string; code: number | null; detail?: string };
  node_draining: { reason: string };
  room_closed: { room: string; reason: string };
  /** the room's recording changed status; a failure is also an "error" event recording/backend-failed */
  recording: { recording: string; status: RecordingStatus; code?: "recording/backend-failed"; detail?: string };
  /** the node told which simulcast layers of one of this participant's tracks anyone receives; the
   * SDK paused the others and resumed these (RTCRtpSender.setParameters), or could not (reason) */
  subscribed_layers: { track: string; layers: { rid: string; active: boolean }[]; applied: boolean; reason?: string };
  error: LevelChatError;
}

export type ConnectionQuality = "excellent" | "good" | "poor" | "lost";

export type RecordingStatus = "starting" | "recording" | "finishing" | "completed" | "failed";

/** A recording as the node's API describes it (POST /v1/rooms/{room}/recording, DELETE /v1/recordings/{id}). */
export interface RecordingInfo {
  id: string;
  room: string;
  status: RecordingStatus;
  files?: Record<string, unknown>[];
  error?: { code: "recording/backend-failed"; detail: string };
}

export class Room {
  readonly config: Readonly<Required<Omit<ClientOptions, "token" | "tokenProvider" | "name" | "iceServers">>> & ClientOptions;
  readonly state: RoomState;
  readonly participant: ParticipantInfo | null;
  readonly participants: Map<string, ParticipantInfo>;
  readonly remoteTracks: Map<string, RemoteTrack>;
  readonly activeSpeakers: { participant: string; track: string; level: number }[];
  /** each participant's connection quality as last told (the "connection_quality" event), this one's included */
  readonly connectionQuality: Map<string, ConnectionQuality>;
  readonly publisher: RTCPeerConnection | null;
  readonly subscriber: RTCPeerConnection | null;
  readonly localTracks: Map<MediaStreamTrack, string | null>;
  readonly dataChannels: { reliable: RTCDataChannel | null; lossy: RTCDataChannel | null };
  readonly dataReady: Promise<void>;
  readonly rtcConfig: RTCConfiguration;
  /** the last join result (`resume` token included; `codecs`: the room's codec policy) */
  readonly joined: Record<string, unknown> | null;
  /** subscribe; returns the unsubscribe function */
  on<K extends keyof RoomEvents>(event: K, handler: (value: RoomEvents[K]) => void): () => void;
  call(method: string, params?: Record<string, unknown>, options?: { retries?: number }): Promise<Record<string, unknown>>;
  /** codec/unsupported (before any offer) when this browser encodes none of the room's codecs of a track's kind, or when the node refuses the offer's codecs */
  publish(stream: MediaStream, options?: { simulcast?: boolean }): Promise<TrackInfo[]>;
  /** needs recording:write in the token and a room with the recording policy: else recording/not-permitted; recording/backend-failed when the recorder cannot start */
  startRecording(options?: { tracks?: string[] }): Promise<RecordingInfo>;
  stopRecording(id: string): Promise<RecordingInfo>;
  mute(track: MediaStreamTrack, muted?: boolean): Promise<{ track: string; muted: boolean }>;
  setLayer(trackSid: string, layer: string): Promise<Record<string, unknown>>;
  /** bad_request (naming the field) for a wrong option; not_found for a track not received */
  updateSubscription(trackSid: string, options: SubscriptionOptions): Promise<SubscriptionState>;
  layersOf(trackSid: string): string[];
  streamOf(identity: string): MediaStream;
  sendData(data: string | ArrayBuffer | Uint8Array, options?: { reliable?: boolean; destinations?: string[] }): void;
  openData(): Promise<void>;
  restartIce(): Promise<void>;
  leave(): Promise<void>;
}

export class LevelChatClient {
  /** the signaling protocol version sent at join */
  static protocolVersion: number;
  readonly config: Readonly<ClientOptions>;
  /** throws config/invalid (err.field names the option) or config/missing-api-key */
  constructor(options: ClientOptions);
  /** "error": every error of its rooms, those of connect()'s attempts included */
  on(event: "error", handler: (err: LevelChatError) => void): () => void;
  /** transport/unsupported without WebRTC; the join's refusals as signaling/rpc-error */
  connect(): Promise<Room>;
}

export function connect(url: string, token: string | TokenProvider, options?: Omit<ClientOptions, "url" | "token" | "tokenProvider">): Promise<Room>;

/** getUserMedia with its failures as media/permission-denied, media/device-not-found, media/unsupported, media/constraint-not-satisfied */
export function getLocalMedia(constraints?: MediaStreamConstraints): Promise<MediaStream>;
export function mediaError(err: unknown): LevelChatError;

export const PROTOCOL_VERSION: number;
export const SIMULCAST_ENCODINGS: RTCRtpEncodingParameters[];
export const DEFAULTS: Readonly<Record<string, unknown>>;

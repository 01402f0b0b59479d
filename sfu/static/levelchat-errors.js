// LevelChat SDK errors: every error the SDK raises is a LevelChatError with a catalogue code
// (shared/error-reference.txt), `retryable`, `status` (the HTTP status of the catalogue entry, or
// null for an SDK-only code) and `detail`. docs/sdk.md lists when each code is raised.

/** code -> [status, retryable] for the codes the SDK raises itself. */
export const SDK_CODES = Object.freeze({
  "config/invalid": [400, false],
  "config/missing-api-key": [400, false],
  "network/rate-limited": [429, true],
  "media/permission-denied": [null, false],
  "media/device-not-found": [null, false],
  "media/unsupported": [null, false],
  "media/constraint-not-satisfied": [null, false],
  "signaling/connect-failed": [null, true],
  "signaling/closed": [null, true],
  "signaling/timeout": [null, true],
  "signaling/protocol": [null, false],
  "signaling/rpc-error": [null, true],
  "signaling/rpc-timeout": [null, true],
  "transport/ice-failed": [null, true],
  "transport/dtls-failed": [null, true],
  "transport/unsupported": [null, false],
  "codec/unsupported": [null, false],
  "recording/not-permitted": [null, false],
  "recording/backend-failed": [null, true],
  "data/not-open": [null, true],
  "data/open-timeout": [null, true],
  "data/open-failed": [null, true],
});

/** Server codes the catalogue marks retryable. */
const RETRYABLE = new Set([
  "token/expired", "rate_limited", "recording_not_ready", "internal_error", "bad_gateway",
  "upstream_unreachable", "upstream_request_failed", "service_unavailable", "room_check_failed",
  "sso_discovery_failed", "sso_token_exchange_failed",
]);

/** An error with a catalogue code, e.g. "signaling/closed" or "room/cap-denied". */
export class LevelChatError extends Error {
  /**
   * @param {string} code a catalogue code
   * @param {string} detail what happened, for a human
   * @param {{problem?: object|null, inner?: LevelChatError|null, status?: number|null,
   *          retryable?: boolean, retryAfterMs?: number|null, field?: string|null, cause?: unknown}} [extra]
   */
  constructor(code, detail, extra = {}) {
    super(detail);
    this.name = "LevelChatError";
    this.code = code;
    this.detail = detail;
    const known = SDK_CODES[code];
    this.status = extra.status !== undefined ? extra.status : known ? known[0] : extra.problem?.status ?? null;
    this.retryable = extra.retryable ?? (known ? known[1] : RETRYABLE.has(code));
    /** the node's RFC 7807 problem, when the node sent one */
    this.problem = extra.problem ?? null;
    /** signaling/rpc-error: the node's refusal (its own code, status, detail) */
    this.inner = extra.inner ?? null;
    /** network/rate-limited: how long the node asked to wait */
    this.retryAfterMs = extra.retryAfterMs ?? null;
    /** config/invalid: the option at fault */
    this.field = extra.field ?? null;
    if (extra.cause !== undefined) this.cause = extra.cause;
  }

  toJSON() {
    return {
      code: this.code, retryable: this.retryable, status: this.status, detail: this.detail,
      inner: this.inner ? this.inner.toJSON() : null, field: this.field, retryAfterMs: this.retryAfterMs,
    };
  }
}

/** A problem body (or a JSON-RPC error's `data`) as a LevelChatError with the problem's own code. */
export function fromProblem(problem, fallback = "signaling/protocol") {
  if (!problem || typeof problem.code !== "string") {
    return new LevelChatError(fallback, "the node sent an error without a catalogue problem", { problem });
  }
  // an SDK code (signaling/protocol from the node) keeps the catalogue's status and retryable
  const status = problem.code in SDK_CODES ? undefined : typeof problem.status === "number" ? problem.status : null;
  return new LevelChatError(problem.code, problem.detail ?? problem.title ?? problem.code, { problem, status });
}

/** A refusal of an RPC: signaling/rpc-error carrying the node's code (retryable as that code is). */
export function rpcError(method, error) {
  const inner = fromProblem(error?.data, "signaling/rpc-error");
  return new LevelChatError("signaling/rpc-error", `${method} refused: ${inner.code}: ${inner.detail}`, {
    inner, problem: inner.problem, status: inner.status, retryable: inner.retryable,
  });
}

/**
 * Map a getUserMedia failure (a DOMException, by its name) to a media/* error.
 * NotAllowedError/SecurityError: permission-denied; NotFoundError, NotReadableError, and an
 * OverconstrainedError on deviceId: device-not-found; any other OverconstrainedError:
 * constraint-not-satisfied; TypeError (no media asked, a constraint the browser does not know)
 * and NotSupportedError: unsupported.
 */
export function mediaError(err) {
  const name = err?.name ?? "";
  const msg = err?.message || name || String(err);
  if (name === "NotAllowedError" || name === "SecurityError" || name === "PermissionDeniedError") {
    return new LevelChatError("media/permission-denied", `getUserMedia was not allowed: ${msg}`, { cause: err });
  }
  if (name === "OverconstrainedError" || name === "ConstraintNotSatisfiedError") {
    const constraint = err.constraint ?? "";
    if (constraint === "deviceId" || constraint === "groupId") {
      return new LevelChatError("media/device-not-found", `no device matches ${constraint}: ${msg}`, { cause: err });
    }
    return new LevelChatError("media/constraint-not-satisfied", `no device can satisfy ${constraint || "the constraints"}: ${msg}`, { cause: err });
  }
  if (name === "NotFoundError" || name === "DevicesNotFoundError" || name === "NotReadableError" || name === "TrackStartError") {
    return new LevelChatError("media/device-not-found", `no usable device: ${msg}`, { cause: err });
  }
  return new LevelChatError("media/unsupported", `the browser does not support these constraints: ${msg}`, { cause: err });
}

/** navigator.mediaDevices.getUserMedia, its failures mapped by mediaError(). */
export async function getLocalMedia(constraints = { audio: true, video: true }) {
  const devices = globalThis.navigator?.mediaDevices;
  if (!devices || typeof devices.getUserMedia !== "function") {
    throw new LevelChatError("media/unsupported", "navigator.mediaDevices.getUserMedia is not available here");
  }
  try {
    return await devices.getUserMedia(constraints);
  } catch (err) {
    throw mediaError(err);
  }
}

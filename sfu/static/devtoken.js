// Dev-only join tokens minted in the browser (HS256 JWT, WebCrypto HMAC-SHA256).
//
// The dev node trusts the well-known key `devkey`/`secret`; a page that knows a secret can
// mint any token, so this is for local development only. In production the app server
// (or the control plane's `POST /v1/tokens`) mints tokens and hands them to the page.

export const DEV_KEY_ID = "devkey";
export const DEV_SECRET = "secret";
export const DEV_PROJECT = "levelchat";
export const ROOM_RE = /^[A-Za-z0-9-]{4,64}$/;

const encoder = new TextEncoder();

function base64url(bytes) {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function encodeJson(value) {
  return base64url(encoder.encode(JSON.stringify(value)));
}

/**
 * Mint a join token the way `levelchat.tokens.mint` does.
 * @param {{room: string, identity: string, scopes: string[], keyId?: string, secret?: string,
 *          project?: string, ttlS?: number, nowS?: number, name?: string}} opts
 * @returns {Promise<string>} the JWT
 */
export async function mintDevToken(opts) {
  const { room, identity, scopes } = opts;
  const keyId = opts.keyId ?? DEV_KEY_ID;
  const secret = opts.secret ?? DEV_SECRET;
  const project = opts.project ?? DEV_PROJECT;
  const ttlS = opts.ttlS ?? 600;
  if (!globalThis.crypto || !globalThis.crypto.subtle) {
    throw new Error("WebCrypto needs a secure origin: open the page on http://127.0.0.1 or https");
  }
  if (!ROOM_RE.test(room)) throw new Error(`room ${JSON.stringify(room)} must be 4 to 64 letters, digits or dashes`);
  if (!identity || identity.length > 128) throw new Error("identity must be 1 to 128 characters");
  const now = Math.floor(opts.nowS ?? Date.now() / 1000);
  const claims = {
    iss: keyId,
    aud: project,
    iat: now,
    nbf: now,
    exp: now + ttlS,
    scopes: [...new Set(scopes)].sort(),
    sub: identity,
    room,
  };
  if (opts.name) claims.name = opts.name;
  const signingInput = `${encodeJson({ alg: "HS256", typ: "JWT", kid: keyId })}.${encodeJson(claims)}`;
  const key = await crypto.subtle.importKey(
    "raw", encoder.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"],
  );
  const signature = await crypto.subtle.sign("HMAC", key, encoder.encode(signingInput));
  return `${signingInput}.${base64url(new Uint8Array(signature))}`;
}

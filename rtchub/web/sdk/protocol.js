// The protocol's names, generated from rtchub/protocol/constants.py: do not edit.
// Regenerate with: make docs (python -m rtchub.protocol.constants > rtchub/web/sdk/protocol.js)
// (tests/test_protocol_constants.py fails when this file and the server differ.)

export const CLIENT_TYPES = Object.freeze(["join","leave","message","ping","auth","resume","offer","answer","candidate","signal"]);
export const RELAY_TYPES = Object.freeze(["offer","answer","candidate","signal"]);
export const SERVER_TYPES = Object.freeze(["welcome","room-info","user-joined","user-left","offer","answer","candidate","signal","message","pong","ack","error","resumed","token-expiring","close","media-route","publish-answer","subscribe-offer","media-candidate","tracks","tracks-published","tracks-unpublished","track-muted","media-reset","mix-answer","recording"]);
export const ERROR_CODES = Object.freeze(["invalid-json","invalid-message","unknown-type","not-in-room","peer-not-found","room-full","user-id-taken","unauthorized","forbidden","rate-limited","session-expired","internal","sfu-unavailable","bad-sdp","track-not-found","wrong-media-mode"]);
export const CLOSE_CODES = Object.freeze({"NORMAL":1000,"GOING_AWAY":1001,"POLICY":1008,"TOO_BIG":1009,"INTERNAL":1011,"UNAUTHORIZED":4001,"FORBIDDEN":4003,"HEARTBEAT_TIMEOUT":4008,"TAKEN_OVER":4009});
export const SESSION_HEADER = "X-RtcHub-Session";

// rtchub browser SDK: `import { RtcHub, Call, RtcHubError } from '/sdk/rtchub.js'`.
// Plain ES modules, no build step. Reference: docs/sdk-browser.md.
export { RtcHub, RtcHubError } from './hub.js';
export { Call } from './call.js';
export { SfuCall, SIMULCAST } from './sfu.js';
export { AutoCall, layerForWidth } from './auto.js';
export { AudioMixCall } from './mix.js';
export { Emitter } from './emitter.js';
export { SERVER_TYPES } from './transports.js';

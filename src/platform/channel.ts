// One implementation, shared with the SDK's AgentSession (which cannot import from src/).
export { Channel } from "../../sdk/src/channel.js";

-- Moongate's own specs use the test kit that ships inside gatewayd
-- (lua/moongate/test.lua, documented in docs/plugins.md).
return require "moongate.test"

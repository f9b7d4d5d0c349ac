-- The scriptable upstream of the test kit (lua/moongate/test/upstream.lua).
return require "moongate.test.upstream"

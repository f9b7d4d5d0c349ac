-- The test kit's redis-server (lua/moongate/test/redis.lua).
return require "moongate.test.redis"

return {
  fields = {
    word = { type = "string", default = "hello", description = "the greeting" },
    delay = { type = "number", default = 0, between = { 0, 1 }, description = "seconds to wait first" },
  },
}

-- The README's two commands install what is missing; `make build` only checks.
local helpers = require "spec.helpers"

local function dry_run(target)
  local dir = helpers.tmpdir()
  local pid = assert(gw.process.spawn({ "/usr/bin/make", "-n", "--no-print-directory", target },
                                      { stdout = dir .. "/out", stderr = dir .. "/err" }))
  helpers.wait_exit(pid, 20)
  return helpers.read_file(dir .. "/out")
end

describe("Makefile", function()
  it("make build does not install packages", function()
    local out = dry_run("build")
    assert.falsy(out:find("apt-get update", 1, true), out)
    assert.truthy(out:find("Missing Debian packages", 1, true), out) -- it checks and says what is missing
  end)
  it("make test and make run install what is missing first", function()
    assert.truthy(dry_run("test"):find("apt-get update", 1, true))
    assert.truthy(dry_run("run"):find("apt-get update", 1, true))
  end)
end)

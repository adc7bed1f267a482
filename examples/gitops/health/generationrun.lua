-- Argo CD health check for smartspec.dev/v1alpha1 GenerationRun.
-- Contract: specs/CORE-001-resources.md (GenerationRun conditions and status.phase).
-- Rendered into ../argocd-cm.yaml by tools/render_argocd_cm.py; tested by
-- tests/unit/test_argocd_health.py. Lua 5.1 (Argo CD runs gopher-lua): no goto, no //.
--
--   Succeeded                                   -> Healthy
--   Failed                                      -> Degraded (Succeeded condition reason: message)
--   spec.suspend, or phase Suspended            -> Suspended
--   Pending, Generating, Testing, no status yet -> Progressing
--   status.observedGeneration < generation      -> Progressing (the operator has not seen it)
-- A finished run is an execution record and never runs again, so Succeeded and Failed win
-- over a later suspend or an unobserved generation.
local hs = {}

local function condition(status, conditionType)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == conditionType then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local text = c.reason or fallback
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

local status = obj.status
local phase = nil
if status ~= nil then
  phase = status.phase
end
local succeeded = condition(status, "Succeeded")

if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = describe(succeeded, "Succeeded")
  if status.evidence ~= nil and status.evidence.summary ~= nil then
    hs.message = hs.message .. " (tests " .. status.evidence.summary .. ")"
  end
  return hs
end

if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = describe(succeeded, "Failed")
  return hs
end

if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "spec.suspend is true"
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
if status == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to admit the run"
  return hs
end
if generation ~= nil and (status.observedGeneration == nil
    or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = describe(succeeded, "Suspended")
  return hs
end

hs.status = "Progressing"
local message = phase or "Pending"
if status.attempt ~= nil then
  message = message .. ", attempt " .. tostring(status.attempt)
end
local current = nil
if phase == "Generating" then
  current = condition(status, "Generated")
elseif phase == "Testing" then
  current = condition(status, "Tested")
else
  current = condition(status, "Admitted")
end
if current ~= nil and current.status ~= "True" then
  message = message .. " (" .. describe(current, "") .. ")"
end
hs.message = message
return hs

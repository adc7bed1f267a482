-- Argo CD health check for smartspec.dev/v1alpha1 Spec.
-- Contract: specs/CORE-001-resources.md (Spec conditions Valid and Ready).
-- Rendered into ../argocd-cm.yaml by tools/render_argocd_cm.py; tested by
-- tests/unit/test_argocd_health.py. Lua 5.1 (Argo CD runs gopher-lua): no goto, no //.
--
--   status.observedGeneration < generation  -> Progressing (the operator has not seen it)
--   Valid False (lint, secret, dependency)  -> Degraded
--   Ready True                              -> Healthy
--   Ready False, reason Deprecated          -> Healthy, message "deprecated: ..."
--     (Deprecated is the terminal lifecycle state a team chose: the Spec is correct and
--     stored, it only accepts no new runs; Degraded would page someone for a decision)
--   Ready False, reason SnapshotFailed      -> Degraded (runs cannot build from it)
--   anything else, or no status yet         -> Progressing
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
if status == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to validate the Spec"
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
if generation ~= nil and (status.observedGeneration == nil
    or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local valid = condition(status, "Valid")
local ready = condition(status, "Ready")

if valid ~= nil and valid.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(valid, "Invalid")
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end

if ready ~= nil and ready.status == "False" and ready.reason == "Deprecated" then
  hs.status = "Healthy"
  hs.message = "deprecated"
  if ready.message ~= nil and ready.message ~= "" then
    hs.message = hs.message .. ": " .. ready.message
  end
  return hs
end

if ready ~= nil and ready.status == "False" and ready.reason == "SnapshotFailed" then
  hs.status = "Degraded"
  hs.message = describe(ready, "SnapshotFailed")
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready, "waiting for the Ready condition")
return hs

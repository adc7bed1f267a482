-- Argo CD health check for smartspec.dev/v1alpha1 CreditBudget.
-- Contract: specs/CORE-001-resources.md (CreditBudget conditions Ready, BudgetExhausted,
-- ThresholdReached). Rendered into ../argocd-cm.yaml by tools/render_argocd_cm.py; tested by
-- tests/unit/test_argocd_health.py. Lua 5.1 (Argo CD runs gopher-lua): no goto, no //.
--
--   status.observedGeneration < generation  -> Progressing (the operator has not seen it)
--   BudgetExhausted True                    -> Degraded (runs are refused until the period ends)
--   Ready False (e.g. InvalidTimeZone)      -> Degraded (the budget cannot be enforced)
--   ThresholdReached True                   -> Healthy, message "warning: ..."
--   Ready True                              -> Healthy
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
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to evaluate the budget"
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

local ready = condition(status, "Ready")
local exhausted = condition(status, "BudgetExhausted")
local threshold = condition(status, "ThresholdReached")

if exhausted ~= nil and exhausted.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(exhausted, "BudgetExhausted")
  return hs
end

if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(ready, "NotReady")
  return hs
end

if threshold ~= nil and threshold.status == "True" then
  hs.status = "Healthy"
  hs.message = "warning: " .. describe(threshold, "ThresholdCrossed")
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready, "waiting for the Ready condition")
return hs

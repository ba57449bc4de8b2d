-- Argo CD health of a bizosaas.io/v1alpha1 WorkflowRun (docs/gitops.md).
-- A run's phase decides once it is over: Succeeded is Healthy, Failed is Degraded and
-- Cancelled is Suspended (stopped on purpose through spec.cancel, not broken). A finished run
-- is never reconciled again, so its status may describe an older generation for good; while
-- it is Pending or Running the kstatus conditions (Reconciling, Stalled) and
-- status.observedGeneration decide.
local hs = {}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local function text(c, otherwise)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return otherwise
end

-- True when `observed` describes an older generation than the object's.
local function behind(generation, observed)
  return generation ~= nil and observed ~= nil and observed < generation
end

local generation = obj.metadata.generation
local status = obj.status
if status == nil or (status.phase == nil and status.conditions == nil) then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller"
  return hs
end
local ready = condition(status, "Ready")
if status.phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = text(condition(status, "Succeeded"), text(ready, "Succeeded"))
  return hs
end
if status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = text(condition(status, "Failed"), text(ready, "Failed"))
  return hs
end
if status.phase == "Cancelled" then
  hs.status = "Suspended"
  hs.message = text(condition(status, "Failed"), text(ready, "Cancelled"))
  return hs
end
local observed = status.observedGeneration
if observed == nil and ready ~= nil then
  observed = ready.observedGeneration
end

if obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Being deleted"
  return hs
end
local stalled = condition(status, "Stalled")
if is_true(stalled) and not behind(generation, stalled.observedGeneration or observed) then
  hs.status = "Degraded"
  hs.message = text(stalled, "Stalled")
  return hs
end
if behind(generation, observed) then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to observe generation " .. generation
  return hs
end
if is_true(ready) then
  hs.status = "Healthy"
  hs.message = text(ready, "Ready")
  return hs
end
local reconciling = condition(status, "Reconciling")
if is_true(reconciling) then
  hs.status = "Progressing"
  hs.message = text(reconciling, "Reconciling")
  return hs
end
hs.status = "Progressing"
hs.message = text(ready, "Waiting for the controller")
return hs

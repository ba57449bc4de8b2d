-- Argo CD health of a bizosaas.io/v1alpha1 Integration (docs/gitops.md).
-- Reads the kstatus conditions the operator writes: Ready is the summary, Stalled=True a
-- failure only a change of the spec or of what it references fixes, Reconciling=True work
-- under way.
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
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller"
  return hs
end
local ready = condition(status, "Ready")
local observed = status.observedGeneration
if observed == nil and ready ~= nil then
  observed = ready.observedGeneration
end

if obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Being deleted"
  return hs
end
-- A Stalled condition written for this very generation counts even when the rest of the
-- status is older (the operator writes only conditions on an object it cannot read).
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

"""Skills and their executions: manifests per space (``registry``), execution records, leases, events and the
queue in the store (``records``), one execution's model turns through the responses flow (``runner``), the
worker that runs them (``worker``), and what the routes call (``service``). See docs/skills.md."""

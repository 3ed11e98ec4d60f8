-- The spec, stored once.
--
-- `workflows.state` is rewritten at every checkpoint, and the spec was most of it (a 3-step
-- chain's state was 3 KB, its spec 1.1 KB with each step's retry policy spelled out). The
-- spec never changes after `workflow.created`, so it is now written once, here, and
-- `state` is stored without it ("spec": null); readers put the two back together. Rows
-- written before this migration have a NULL `spec` and the spec inside `state`, which
-- readers keep.
ALTER TABLE workflows ADD COLUMN spec TEXT;

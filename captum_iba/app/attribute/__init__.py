"""``captum-iba attribute``: one method's maps for a whole dataset, into the store.

In the order a run uses them: :mod:`.plan` (the arguments checked against each
other and the registries), :mod:`.config` (what the maps depend on),
:mod:`.runner` (sharded, resumable batches), :mod:`.distributed` (one process
or many under ``torchrun``).
"""

"""How extraction is scheduled, never what it computes: ``multidevice`` (one model process per local device)
and ``ray_engine`` (Ray Data on a cluster, ``--engine ray``). Both hand videos to the pipeline's decoder,
batcher and records, and write the store format of :mod:`vfeat.store`. Imported lazily by
:func:`vfeat.extract`, so Ray is needed only when it is used."""

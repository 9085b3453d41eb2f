"""Model families behind one surface (:class:`vfeat.models.base.VideoEncoder`) and one front door
(:func:`vfeat.models.factory.load_model`)."""

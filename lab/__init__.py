"""The lab's own training data: reviewed cell-mode crops -> an ImageFolder data set with a
manifest (``lgld-dataset``), and the disk budget of the crop folder on the Pi."""

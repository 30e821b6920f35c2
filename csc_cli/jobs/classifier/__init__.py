"""The classifier family (SDNet and plain ConvNets): its trainer's pieces (:mod:`.train`), evaluation
(:mod:`.evaluate`) and inspection (:mod:`.inspect`). Nothing here imports the autoencoder family."""

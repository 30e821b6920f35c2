"""The autoencoder family (CSC-CTRL, CTRL): the rate-reduction game (:mod:`.train`), evaluation
(:mod:`.evaluate`) and inspection (:mod:`.inspect`). Nothing here imports the classifier family."""

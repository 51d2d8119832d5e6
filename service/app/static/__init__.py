"""Static files the service serves (the hand-scoring page); a package so wheels ship them."""

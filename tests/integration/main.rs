mod weights;

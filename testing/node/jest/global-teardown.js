'use strict';
module.exports = async function globalTeardown() {
  if (globalThis.__NEPHOS__) await globalThis.__NEPHOS__.stop();
};

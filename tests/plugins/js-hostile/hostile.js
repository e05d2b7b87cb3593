// A test stage in JavaScript that attacks its host in the way config
// `attack` names, as tests/plugins/hostile does in Rust: `none` (behaves),
// `loop`, `recurse`, `alloc`, `unknown-model`; and `infer`, no attack: the
// model `intent` through the SDK on token ids [2, 5, 7], its first output as
// `y`. (JavaScript has no file, environment or socket API here:
// componentize-js gives none to a stage.) Input `x`, output `y`.

import * as og from './outpost-guest.js';

class Hostile {
  constructor(config) {
    this.attack = config.require('attack');
    config.get('model');
  }

  describe() {
    return og.stageInfo('js-hostile', '0.1.0', 'attacks its host', [og.spec('x')], [og.spec('y')]);
  }

  run() {
    switch (this.attack) {
      case 'none':
        return [og.fromF32('y', [1], [1])];
      case 'loop': {
        let n = 0;
        for (;;) n += 1;
      }
      case 'recurse': {
        const down = (n) => down(n + 1) + 1;
        return [og.fromF32('y', [1], [down(0)])];
      }
      case 'alloc': {
        const hoard = [];
        for (;;) hoard.push(new Uint8Array(1 << 20).fill(1));
      }
      case 'infer': {
        const [first] = og.Model.load('intent').compute([
          og.fromI64('input_ids', [1, 3], [2, 5, 7]),
          og.fromI64('attention_mask', [1, 3], [1, 1, 1]),
        ]);
        return [{ ...first, name: 'y' }];
      }
      case 'unknown-model':
        og.Model.load('not-granted');
        return [];
      default:
        throw og.StageError.invalidConfig(`unknown attack '${this.attack}'`);
    }
  }
}

export const { init, describe, run } = og.exportStage(Hostile);
